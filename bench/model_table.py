"""Key rate versus distance of the analytic model (GYS parameters), the cutoff distances, and the
speed of the emulated quantum channel.

Run: ``.venv/bin/python bench/model_table.py [--f 1.22] [--pe-sample-fraction 0.05] [--no-speed]``

Columns (per emitted pulse unless stated):
  Q_mu, E_mu        signal gain and QBER
  R_txt             textbook decoy rate (infinite decoy, q = 1/2), comparable with the literature
  R_inf, R_prac     protocol rate (p_signal, sifting, QBER sample) with true Q1, e1 / with the
                    vacuum + weak bounds: what the emulated link distils
  GLLP .48, GLLP*   textbook GLLP rate at mu = 0.48 / at the optimal mu (shown in brackets)
  b/s               R_prac times the pulse rate (1 GHz)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np

from qkdnet.node.core.channel_model import (
    GYS_RECONCILIATION_EFFICIENCY,
    ChannelParameters,
    max_distance,
    model_figures,
    optimal_gllp_mu,
)
from qkdnet.node.core.quantum_channel import measure, transmit


def print_table(f: float, pe_sample_fraction: float) -> None:
    header = (
        f"{'L km':>5} {'Q_mu':>9} {'E_mu %':>7} {'R_txt':>9} {'R_inf':>9} {'R_prac':>9} "
        f"{'GLLP .48':>9} {'GLLP*':>9} {'(mu*)':>7} {'b/s':>10}"
    )
    print(header)
    print("-" * len(header))
    for length in range(0, 161, 10):
        p = ChannelParameters(length_km=float(length))
        fig = model_figures(p, f, pe_sample_fraction=pe_sample_fraction)
        mu_opt = optimal_gllp_mu(p, f)
        gllp_opt = model_figures(dataclasses.replace(p, mu=mu_opt, decoy=False), f).r_textbook_gllp
        mu_opt_text = f"{mu_opt:.4f}" if gllp_opt > 0.0 else "-"
        print(
            f"{length:5d} {fig.q_mu:9.3e} {100 * fig.e_mu:7.3f} {fig.r_textbook_decoy:9.3e} "
            f"{fig.r_protocol_infinite:9.3e} {fig.r_protocol_practical:9.3e} "
            f"{fig.r_textbook_gllp:9.3e} {gllp_opt:9.3e} {mu_opt_text:>7} "
            f"{fig.secret_bits_per_second:10.4g}"
        )


def print_cutoffs(f: float) -> None:
    p = ChannelParameters(length_km=0.0)
    rows = [
        ("decoy, infinite (textbook), mu = 0.48", max_distance(p, f, decoy=True, practical=False)),
        (
            f"decoy, practical vacuum + weak (nu = {p.nu}), mu = 0.48",
            max_distance(p, f, decoy=True, practical=True),
        ),
        (
            "decoy, infinite, optimal mu",
            max_distance(p, f, decoy=True, practical=False, optimize_mu=True),
        ),
        ("GLLP (no decoy), mu = 0.48", max_distance(p, f, decoy=False, practical=False)),
        (
            "GLLP (no decoy), optimal mu",
            max_distance(p, f, decoy=False, practical=False, optimize_mu=True),
        ),
    ]
    print(f"\nCutoff distances (f = {f}):")
    for label, distance in rows:
        print(f"  {label:<52} {distance:8.2f} km")


def print_emulation_speed() -> None:
    print("\nEmulated channel, transmit + measure, 2e6 detections (median of 7 runs):")
    rng = np.random.default_rng(2024)
    for length, eve in ((10.0, 0.0), (80.0, 0.0), (10.0, 0.5)):
        p = ChannelParameters(length_km=length, eavesdrop_fraction=eve)
        n_pulses = int(2e6 / model_figures(p, GYS_RECONCILIATION_EFFICIENCY).detections_per_pulse)
        t_transmit: list[float] = []
        t_measure: list[float] = []
        count = 0
        for _ in range(7):
            start = time.perf_counter()
            alice, out, _ = transmit(rng, p, 0, n_pulses)
            middle = time.perf_counter()
            measure(rng, out)
            end = time.perf_counter()
            t_transmit.append(middle - start)
            t_measure.append(end - middle)
            count = len(alice)
        print(
            f"  {length:5.0f} km, Eve {eve:.1f}: {n_pulses:.3g} pulses -> {count} detections; "
            f"transmit {1e3 * statistics.median(t_transmit):.1f} ms, "
            f"measure {1e3 * statistics.median(t_measure):.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--f", type=float, default=GYS_RECONCILIATION_EFFICIENCY)
    parser.add_argument("--pe-sample-fraction", type=float, default=0.05)
    parser.add_argument("--no-speed", action="store_true", help="skip the emulation timing")
    args = parser.parse_args()
    print_table(args.f, args.pe_sample_fraction)
    print_cutoffs(args.f)
    if not args.no_speed:
        print_emulation_speed()


if __name__ == "__main__":
    main()
