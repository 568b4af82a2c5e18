"""How well and how fast the RFM head learns analytic densities on S², on CPU.

    python benchmarks/rfm_flow.py                 # full budget, a few minutes on 2 cores
    python benchmarks/rfm_flow.py --train-steps 500 --held-out 500   # a quick look

Trains an unconditional head on a von Mises–Fisher target (κ = 10) and on a mixture of three vMFs
(weights 0.5 / 0.3 / 0.2, κ = 10 / 30 / 60, at Paris, Sydney, New York). For each it prints the true
and the model's mean NLL of the same held-out draws (nats/sr), their gap (the KL divergence from the
target to the model, with its standard error) against the acceptance bound of 0.05 nats, and the
p-values of two-sample tests of model samples against exact draws. The baseline NLL is the uniform
density's, log 4π. Then, per ODE solver, the gap and the batched throughput of sampling and of exact
log-density (points/s), the ratio between them being the price of the divergence. The gap is a KL
divergence only when the solver is accurate: Euler's negative gaps are its discretisation error.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from scipy import stats

from avgeo.geo.sphere import SPHERE_AREA_SR, latlon_to_xyz, normalize
from avgeo.geo.vmf import VMFMixture, energy_two_sample_test, vmf_cosine_cdf
from avgeo.prediction.flow import RFMHead, fit_to_sampler
from avgeo.prediction.vector_field import RFMConfig

ACCEPTED_GAP_NATS = 0.05
TABLE_HEADER = (
    "| solver | true NLL | model NLL | gap (nats) | < 0.05 | sample pts/s | log-density pts/s | ratio |\n"
    "|---|---|---|---|---|---|---|---|"
)


def targets() -> dict[str, VMFMixture]:
    """The two analytic targets, as mixtures (the vMF is a one-component mixture)."""
    single = VMFMixture(
        torch.ones(1, dtype=torch.float64),
        normalize(torch.tensor([[0.2, 0.5, 0.8]], dtype=torch.float64)),
        torch.tensor([10.0], dtype=torch.float64),
    )
    cities_deg = torch.tensor([[48.86, 2.35], [-33.87, 151.21], [40.71, -74.01]], dtype=torch.float64)
    mixture = VMFMixture(
        torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
        latlon_to_xyz(cities_deg),
        torch.tensor([10.0, 30.0, 60.0], dtype=torch.float64),
    )
    return {"vMF κ=10": single, "3-vMF mixture": mixture}


def nll_gap(head: RFMHead, target: VMFMixture, held_out: torch.Tensor) -> tuple[float, float, float]:
    """(true NLL, model NLL, standard error of their paired difference), nats/sr, on `held_out` (N, 3)."""
    with torch.no_grad():
        model_log_density = head.log_density(held_out.float()).double()
    true_log_density = target.log_density(held_out)
    difference = true_log_density - model_log_density
    standard_error = difference.std().item() / math.sqrt(held_out.shape[0])
    return -true_log_density.mean().item(), -model_log_density.mean().item(), standard_error


def points_per_second(run, num_points: int, repeats: int = 3) -> float:
    """Best-of-`repeats` throughput of `run()` that handles `num_points` points."""
    best_s = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best_s = min(best_s, time.perf_counter() - start)
    return num_points / best_s


def solver_row(
    head: RFMHead, solver: str, target: VMFMixture, held_out: torch.Tensor, batch: int, generator
) -> str:
    """One Markdown table row: the NLL gap and the throughputs of `head` integrated with `solver`."""
    head.config.solver = solver  # read at each call; the weights stay
    true_nll, model_nll, standard_error = nll_gap(head, target, held_out)
    density_points = held_out[:batch].float()
    with torch.no_grad():
        sample_rate = points_per_second(lambda: head.sample(None, batch, generator), batch)
        density_rate = points_per_second(lambda: head.log_density(density_points), density_points.shape[0])
    gap = model_nll - true_nll
    verdict = "yes" if abs(gap) < ACCEPTED_GAP_NATS else "NO"
    return (
        f"| {solver} | {true_nll:.4f} | {model_nll:.4f} | {gap:+.4f} ± {standard_error:.4f} | {verdict} | "
        f"{sample_rate:,.0f} | {density_rate:,.0f} | {sample_rate / density_rate:.1f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=6000, help="Adam steps per target")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--width", type=int, default=256, help="MLP width")
    parser.add_argument("--ode-steps", type=int, default=16, help="ODE steps from t = 0 to 1")
    parser.add_argument("--held-out", type=int, default=4096, help="held-out draws for the NLL")
    parser.add_argument("--two-sample", type=int, default=2000, help="model and exact draws per test")
    parser.add_argument("--batch", type=int, default=4096, help="points per batched throughput call")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    print(
        f"RFM head: width {args.width}, {args.train_steps} steps x batch {args.batch_size}, "
        f"{args.ode_steps} ODE steps, {args.threads} torch thread(s)"
    )
    print(f"baseline: the uniform density's NLL, log 4π = {math.log(SPHERE_AREA_SR):.4f} nats/sr")

    for name, target in targets().items():
        head = RFMHead(RFMConfig(width=args.width, num_steps=args.ode_steps))

        def draw_batch(n: int, target: VMFMixture = target) -> tuple[torch.Tensor, None]:
            return target.sample(n, generator).float(), None

        start = time.perf_counter()
        losses = fit_to_sampler(head, draw_batch, args.train_steps, args.batch_size, 2e-3, generator)
        train_s = time.perf_counter() - start
        with torch.no_grad():
            model_samples = head.sample(None, args.two_sample, generator)[0].double()
        _, energy_p = energy_two_sample_test(
            model_samples, target.sample(args.two_sample, generator), 500, generator
        )
        tests = f"two-sample energy test p = {energy_p:.3f}"
        if target.weights.shape[0] == 1:
            kappa = float(target.kappas[0])

            def cosine_cdf(cosine, kappa: float = kappa):
                return vmf_cosine_cdf(torch.as_tensor(cosine), kappa).numpy()

            ks = stats.kstest((model_samples @ target.mean_dirs[0]).numpy(), cosine_cdf)
            tests += f"; KS test of μᵀx against its exact CDF p = {ks.pvalue:.3f}"

        print(f"\n## {name} (trained in {train_s:.0f} s, final loss {sum(losses[-200:]) / 200:.3f}); {tests}")
        print(TABLE_HEADER)
        held_out = target.sample(args.held_out, generator)
        for solver in ("euler", "midpoint", "rk4"):
            print(solver_row(head, solver, target, held_out, args.batch, generator))


if __name__ == "__main__":
    main()
