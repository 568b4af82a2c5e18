"""The Ray pieces: Data stages, Train loops and actors that compose the library."""
