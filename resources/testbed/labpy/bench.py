"""The benchmark against QEMU: runs the bench scenario with N repeats, then tabulates its results.

Every figure comes from `labcheck vmm-run` / `labcheck read-bench` lines in the L1 console log;
this module only groups them, takes medians and spreads, and divides microvmm by QEMU.
"""

import json
import os
import statistics
import sys
import time

from . import runner, scenario

DEFAULT_SCENARIO = os.path.join(runner.REPO, "tests", "scenarios", "bench-arm64.toml")
RUN = "@@BENCH run "
READ = "@@BENCH read "

# (label, case, the run's key holding the value, unit)
METRICS = [
    ("1. launch -> L2 init, DT, no devices", "dt-nodev", "launch_to_init_ms", "ms"),
    ("   launch -> guest kernel start", "dt-nodev", "launch_to_kernel_ms", "ms"),
    ("   guest kernel start -> init", "dt-nodev", "guest_kernel_to_init_ms", "ms"),
    ("2. launch -> L2 init, ACPI, 2 vSMMUs + 2 disks", "acpi-2smmu", "launch_to_init_ms", "ms"),
    ("   launch -> guest kernel start", "acpi-2smmu", "launch_to_kernel_ms", "ms"),
    ("   guest kernel start -> init", "acpi-2smmu", "guest_kernel_to_init_ms", "ms"),
    ("3. VMM memory beyond guest RAM, DT idle", "dt-nodev", "overhead_kib", "KiB"),
    ("   VMM memory beyond guest RAM, 2 vSMMUs idle", "acpi-2smmu", "overhead_kib", "KiB"),
    ("4. host invalidate ioctls per guest CMD_SYNC", "acpi-2smmu", "ioctls_per_sync", "x"),
    ("   host invalidate ioctls per guest command", "acpi-2smmu", "ioctls_per_command", "x"),
    ("   host invalidate ioctls, workload", "acpi-2smmu", "invalidate_ioctls", ""),
    ("   guest CMD_SYNC batches, workload", "acpi-2smmu", "guest_cmdq_batches", ""),
    ("5. O_DIRECT read vda 4 KiB", "acpi-2smmu", "read:/dev/vda:4096", "MiB/s"),
    ("   O_DIRECT read vda 1 MiB", "acpi-2smmu", "read:/dev/vda:1048576", "MiB/s"),
    ("   O_DIRECT read nvme0n1 4 KiB", "acpi-2smmu", "read:/dev/nvme0n1:4096", "MiB/s"),
    ("   O_DIRECT read nvme0n1 1 MiB", "acpi-2smmu", "read:/dev/nvme0n1:1048576", "MiB/s"),
    ("6. process start -> first KVM_RUN, DT", "dt-nodev", "start_to_first_kvm_run_ms", "ms"),
    ("   process start -> first KVM_RUN, 2 vSMMUs", "acpi-2smmu", "start_to_first_kvm_run_ms", "ms"),
]


def parse_log(lines):
    """The runs in an L1 console log: dicts from `@@BENCH run`, each with the reads before it."""
    runs, reads = [], {}
    for line in lines:
        line = line.rstrip("\n")
        text = line[len(runner.L2_PREFIX):] if line.startswith(runner.L2_PREFIX) else line
        if text.startswith(READ):
            r = json.loads(text[len(READ):])
            reads[f"read:{r['dev']}:{r['block']}"] = r["mib_s"]
        elif line.startswith(RUN):
            run = json.loads(line[len(RUN):])
            run.update(reads)
            reads = {}
            if run.get("guest_cmdq_batches"):
                run["ioctls_per_sync"] = run["invalidate_ioctls"] / run["guest_cmdq_batches"]
            if run.get("guest_commands"):
                run["ioctls_per_command"] = run["invalidate_ioctls"] / run["guest_commands"]
            runs.append(run)
    return runs


def summarize(runs):
    """{(case, key): {vmm: {"median", "min", "max", "n"}}} over every run that has the key."""
    out = {}
    for _label, case, key, _unit in METRICS:
        per_vmm = {}
        for vmm in ("microvmm", "qemu"):
            values = [r[key] for r in runs if r["vmm"] == vmm and r["case"] == case and key in r]
            if values:
                per_vmm[vmm] = {"median": statistics.median(values), "min": min(values),
                                "max": max(values), "n": len(values)}
        out[(case, key)] = per_vmm
    return out


def _fmt(v):
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) < 10 and v != int(v) else f"{v:.0f}"


def table(summary):
    rows = [("metric", "unit", "microvmm median [min-max]", "QEMU median [min-max]",
             "microvmm/QEMU", "n")]
    for label, case, key, unit in METRICS:
        s = summary[(case, key)]
        cells = []
        for vmm in ("microvmm", "qemu"):
            v = s.get(vmm)
            cells.append(f"{_fmt(v['median'])} [{_fmt(v['min'])}-{_fmt(v['max'])}]" if v else "-")
        m, q = s.get("microvmm"), s.get("qemu")
        ratio = f"{m['median'] / q['median']:.2f}" if m and q and q["median"] else "-"
        n = "/".join(str(s[v]["n"]) for v in ("microvmm", "qemu") if v in s)
        rows.append((label, unit, cells[0], cells[1], ratio, n))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv):
    import argparse

    parser = argparse.ArgumentParser(
        prog="bench", description="microvmm against QEMU in one L1 boot of the nested lab.")
    parser.add_argument("--repeats", type=int, default=3, help="runs per VMM and case (default 3)")
    parser.add_argument("--scenario", default=DEFAULT_SCENARIO, help="bench scenario file")
    parser.add_argument("--exits", action="store_true",
                        help="also trace every guest exit (diagnosis: slows the guests a little)")
    parser.add_argument("--from-log", metavar="L1LOG",
                        help="tabulate an existing L1 console log instead of running the lab")
    parser.add_argument("--out", default=os.path.join(runner.REPO, "target", "bench"),
                        help="directory for the JSON results (default: %(default)s)")
    opts = parser.parse_args(argv)
    if opts.repeats < 1:
        parser.error("--repeats must be at least 1")

    if opts.from_log:
        log_path, took = opts.from_log, None
    else:
        s = scenario.load(opts.scenario)
        s.timeout = max(s.timeout, 600 + 420 * opts.repeats)
        logs = os.path.join(opts.out, "logs")
        t0 = time.monotonic()
        runner.log(f"bench: {opts.repeats} repeat(s) of {s.name}; console logs in {logs}/{s.name}")
        env = {"BENCH_REPEATS": opts.repeats, "BENCH_EXITS": int(opts.exits)}
        outcome = runner.Run(runner.Lab(), s, logs, env=env).execute()
        took = time.monotonic() - t0
        log_path = os.path.join(logs, s.name, "l1.log")
        if not outcome.passed:
            print(f"bench FAILED: {outcome.reason} (logs in {os.path.dirname(log_path)})")
            return 1
    with open(log_path) as f:
        runs = parse_log(f)
    if not runs:
        print(f"bench: no '@@BENCH run' lines in {log_path}")
        return 1
    summary = summarize(runs)
    print(table(summary))
    if took is not None:
        print(f"\n{len(runs)} runs in one L1 boot, {took / 60:.1f} min wall clock "
              "(TCG-nested lab: absolute times are not comparable to hardware; ratios are)")
    os.makedirs(opts.out, exist_ok=True)
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "repeats": opts.repeats,
        "runs": runs,
        "summary": [{"metric": label.strip(), "case": case, "key": key, "unit": unit,
                     **summary[(case, key)]} for label, case, key, unit in METRICS],
    }
    path = os.path.join(opts.out, f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(opts.out, "latest.json"), "w") as f:
        json.dump(doc, f, indent=1)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
