#!/usr/bin/env python3
"""This crate against svix, from the latest `cargo bench` here."""
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent / "target" / "criterion" / "svix"
m = {n: json.loads((root / n / "new" / "estimates.json").read_text())["median"]["point_estimate"]
     for n in ["ours_verify", "svix_verify", "ours_verify_parse", "svix_verify_parse"]}
print("| | ours | svix | svix / ours (our throughput advantage) |")
print("|---|---|---|---|")
print(f"| verify | {m['ours_verify'] / 1000:.2f} µs | {m['svix_verify'] / 1000:.2f} µs | {m['svix_verify'] / m['ours_verify']:.2f}× |")
print(f"| verify + typed parse | {m['ours_verify_parse'] / 1000:.2f} µs | {m['svix_verify_parse'] / 1000:.2f} µs | {m['svix_verify_parse'] / m['ours_verify_parse']:.2f}× |")
