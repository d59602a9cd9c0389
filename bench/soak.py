"""Soak test of `oodmon-edge run` (run by hand: `cargo xtask soak [--frames N]`).

Loops the built-in scenario (cat, coins, cat: one OK -> OOD -> OK cycle per loop at its
10 frames/s media time) through the built-in bundle for N frames, with the alarm service
on a pseudo-terminal watched by `oodmon-monitor --plain`, and a journal. Samples the
edge's resident memory and open file descriptors every few seconds. At the end checks that
memory stayed flat, no descriptor leaked, the journal is whole (one sequence, no gap) and
holds one OOD raise per loop, and the monitor saw no lost message and no CRC error.
Prints one JSON object with the figures.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time


def proc_status(pid):
    rss = fds = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, fds


def main():
    edge, monitor_bin, bundle, scenario = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    frames = int(sys.argv[5])
    every = float(sys.argv[6]) if len(sys.argv) > 6 else 5.0
    work = tempfile.mkdtemp(prefix="oodmon-soak-")
    journal = os.path.join(work, "alarms.jsonl")
    # two pseudo-terminals and a relay: the edge writes to one, the monitor reads the other
    edge_master, edge_slave = os.openpty()
    mon_master, mon_slave = os.openpty()
    for fd in (edge_master, edge_slave, mon_master, mon_slave):
        os.set_inheritable(fd, False)
    relayed = [0]

    def relay():
        while True:
            try:
                data = os.read(edge_master, 4096)
            except OSError:
                return
            if not data:
                return
            relayed[0] += len(data)
            os.write(mon_master, data)

    threading.Thread(target=relay, daemon=True).start()
    # the monitor's lines go to a file: a pipe nobody drains would fill, block the monitor,
    # stop it reading the line, and the edge would (rightly) go FAULT output_error
    monitor_log = open(os.path.join(work, "monitor.log"), "w")
    monitor = subprocess.Popen(
        [monitor_bin, "--port", os.ttyname(mon_slave), "--plain", "--heartbeat-ms", "200"],
        stdout=monitor_log, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)
    run = subprocess.Popen(
        [edge, "run", "--bundle", bundle, "--source", f"avi:{scenario}", "--loop",
         "--max-frames", str(frames), "--serial", os.ttyname(edge_slave),
         "--journal", journal],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RUST_LOG": "warn"})
    samples = []
    start = time.time()
    while run.poll() is None:
        rss, fds = proc_status(run.pid)
        if rss is not None:
            samples.append((round(time.time() - start, 1), rss, fds))
        time.sleep(every)
    elapsed = time.time() - start
    err = run.stderr.read()
    time.sleep(1.0)
    monitor.send_signal(2)  # Ctrl-C: the monitor prints its summary and exits
    monitor.wait(timeout=30)
    monitor_log.close()
    mon_out = open(os.path.join(work, "monitor.log")).read()
    events = [json.loads(l) for l in open(journal)]
    sequences = [e["sequence"] for e in events]
    raises = sum(1 for e in events if e["state"] == "OOD")
    loops = frames // 72
    # after the first minute: the bundle, source, port and journal are open and the
    # allocator has its working set
    steady = [s for s in samples if s[0] >= 60] or samples
    rss = [s[1] for s in steady]
    fds = [s[2] for s in steady]
    with open(os.path.join(work, "samples.tsv"), "w") as f:
        f.write("seconds\trss_bytes\tfds\n")
        for t, r, n in samples:
            f.write(f"{t}\t{r}\t{n}\n")
    summary_line = [l for l in mon_out.splitlines() if " messages, " in l]
    result = {
        "frames": frames,
        "exit_code": run.returncode,
        "elapsed_s": round(elapsed, 1),
        "frames_per_second": round(frames / elapsed, 1),
        "samples": len(samples),
        "rss_first_mb": round(rss[0] / 2**20, 2) if rss else None,
        "rss_min_mb": round(min(rss) / 2**20, 2) if rss else None,
        "rss_max_mb": round(max(rss) / 2**20, 2) if rss else None,
        "rss_last_mb": round(rss[-1] / 2**20, 2) if rss else None,
        "rss_every_tenth_sample_mb": [round(s[1] / 2**20, 2) for s in samples[::10]],
        "fds_at_start": samples[0][2] if samples else None,
        "fds_first": fds[0] if fds else None,
        "fds_max": max(fds) if fds else None,
        "fds_last": fds[-1] if fds else None,
        "journal_events": len(events),
        "journal_sequences_contiguous": sequences == list(range(len(sequences))),
        "ood_raises": raises,
        "scenario_loops": loops,
        "last_state": (events[-1]["state"], events[-1]["reason"]) if events else None,
        "serial_bytes": relayed[0],
        "monitor_summary": summary_line[-1] if summary_line else mon_out[-300:],
        "stderr_tail": err[-500:],
        "work_dir": work,
    }
    ok = (run.returncode == 0 and result["journal_sequences_contiguous"]
          and abs(raises - loops) <= 1
          and result["last_state"] == ("FAULT", "stopping")
          and rss and max(rss) <= 1.1 * min(rss)
          and fds and fds[-1] <= fds[0]
          and summary_line and " 0 lost," in summary_line[-1] and "(0 CRC errors)" in summary_line[-1])
    result["passed"] = bool(ok)
    print(json.dumps(result, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
