"""The Ray Serve application of the geolocation endpoint: `serve.app:app`, set up by serve/config.yaml."""
