#!/usr/bin/env python3
"""Ratio tables from criterion's latest run (target/criterion): medians, and
each benchmark against its limit measured in the same run.

    cargo bench --bench throughput && python3 benches/ratios.py
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def median_ns(group, function, parameter=None):
    path = ROOT / group / function
    if parameter is not None:
        path = path / parameter
    estimates = path / "new" / "estimates.json"
    if not estimates.exists():
        return None
    return json.loads(estimates.read_text())["median"]["point_estimate"]


def fmt(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"


def main():
    if not ROOT.exists():
        sys.exit("no criterion results: run `cargo bench --bench throughput` first")

    print("## Verification vs raw HMAC-SHA256 over the same signed content\n")
    print("| body | raw HMAC | verify | verify / raw | raw MB/s | verify MB/s | verify throughput / raw |")
    print("|---|---|---|---|---|---|---|")
    for size in [256, 1024, 16384, 262144, 1048576]:
        raw, verify = median_ns("verify", "raw_hmac", str(size)), median_ns("verify", "verify", str(size))
        if raw and verify:
            print(f"| {size} B | {fmt(raw)} | {fmt(verify)} | {verify / raw:.3f} | {size / raw * 1000:.0f} | {size / verify * 1000:.0f} | {raw / verify:.1%} |")

    print("\n## Verify + typed parse, per fixture\n")
    print("| fixture | bytes | raw HMAC | verify + parse | / raw HMAC | typed parse | into Value | syntax only | typed / Value |")
    print("|---|---|---|---|---|---|---|---|---|")
    fixtures = ROOT.parent.parent / "tests" / "fixtures" / "events"
    for parameter in sorted(p.name for p in (ROOT / "parse" / "raw_hmac").iterdir() if p.is_dir() and p.name != "report"):
        raw = median_ns("parse", "raw_hmac", parameter)
        both = median_ns("parse", "verify_parse", parameter)
        typed = median_ns("parse", "parse", parameter)
        value = median_ns("parse", "value", parameter)
        syntax = median_ns("parse", "syntax", parameter)
        if None in (raw, both, typed, value, syntax):
            continue
        file = fixtures / f"{parameter.removesuffix('.compact')}.json"
        size = file.stat().st_size
        if parameter.endswith(".compact"):
            compact = json.dumps(json.loads(file.read_bytes()), separators=(",", ":"), ensure_ascii=False)
            size = len(compact.encode())
        print(f"| {parameter} | {size} | {fmt(raw)} | {fmt(both)} | {both / raw:.2f}× | {fmt(typed)} | {fmt(value)} | {fmt(syntax)} | {typed / value:.2f} |")

    bare, receiver = median_ns("layer", "bare"), median_ns("layer", "receiver")
    if bare and receiver:
        print("\n## One delivery through tower `oneshot`\n")
        print("| bare service (reads the body) | layer + dispatch (verify, parse, claim, run, complete) | difference | receiver / bare |")
        print("|---|---|---|---|")
        print(f"| {fmt(bare)} | {fmt(receiver)} | {fmt(receiver - bare)} | {receiver / bare:.2f}× |")


if __name__ == "__main__":
    main()
