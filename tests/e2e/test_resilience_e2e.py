"""End-to-end tests of ``wallaroo-run --run-with-resilience`` on local workers: real processes
killed with SIGKILL, real checkpoint files, real file sinks (127.0.0.1 only).

The apps are tests/apps/wr_resilience_app.py:

- ``word_count`` (file source -> split -> key_by word -> count -> two-phase file sink): a run
  whose workers are killed at random moments must end (exit 0) with the same committed output
  as a crash-free run, byte for byte once the lines of all part files are sorted.
- ``sequences`` (generator source -> (key, seq) -> key_by -> last seq -> file sink): after
  random kills, each key's lines are exactly ``1..N`` in order (nothing lost, repeated or
  reordered) and every key is there.

Also: a damaged (truncated, or one byte flipped) newest complete checkpoint after the whole
run was killed is detected at restart and the previous one is used; a missing
``--resilience-dir`` exits 2; a full (tmpfs) or read-only resilience dir stops the run with
exit 1 and a message saying what to do, and the same command recovers once it is fixed (root
only); a plain TCP source is named at startup as unable to replay.

Random choices print their seed (``-s`` shows it; a failure's message repeats it).
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from support.net import HOST, frame
from support.processes import STARTUP_RE, WALLAROO_RUN, Proc, app_env, run_cli

pytestmark = pytest.mark.timeout(60)

APP = "wr_resilience_app"
WC_NAME = "Resilient_Word_Count"          # the app's folder in --resilience-dir
SEQ_NAME = "Resilient_Sequences"
INTERVAL_NS = 150_000_000                  # --time-between-checkpoints: 150 ms
RUN_TIMEOUT = 45.0

WORKERS_RE = re.compile(r"\| (?P<count>\d+) workers \(pids (?P<pids>\d+(?:, \d+)*)\)$")
RECOVERED_RE = re.compile(r"wallaroo: recovered: (?P<count>\d+) workers running again "
                          r"\(pids (?P<pids>\d+(?:, \d+)*)\)")
WENT_AWAY_RE = (r"wallaroo: worker worker-{index} went away \(pid {pid} was killed by SIGKILL\); "
                r"every worker goes back to checkpoint (?P<ckpt>\d+|none)")
RESTORED_RE = re.compile(r"wallaroo \[worker-(?P<worker>\d+)\]: restored checkpoint (?P<id>\d+): ")


# ---------------------------------------------------------------------------------------------
# helpers

def word_input(path: Path, lines: int, seed: int, vocabulary: int = 2000, per_line: int = 12) -> Path:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocabulary)]
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(lines):
            out.write(" ".join(rng.choice(words) for _ in range(rng.randint(1, per_line))) + "\n")
    return path


def model_word_count(path: Path) -> list[bytes]:
    """The sorted lines a word count of ``path`` must commit: ``word 1`` .. ``word total``."""
    totals: dict[str, int] = defaultdict(int)
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            for word in line.split():
                totals[word] += 1
    return sorted(f"{w} {n}".encode() for w, total in totals.items() for n in range(1, total + 1))


def sink_files(output: Path) -> list[Path]:
    """The visible files of a file sink: ``output`` itself or its ``.part-N`` files."""
    files = sorted(output.parent.glob(output.name + ".part-*"))
    if output.exists():
        files.append(output)
    return files


def pending_files(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f".{output.name}*.pending.*"))


def committed_lines(output: Path) -> list[bytes]:
    """All lines of every part file, sorted; each file must end on a whole line."""
    lines: list[bytes] = []
    for path in sink_files(output):
        data = path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{path} ends inside a line: {data[-100:]!r}"
        lines += data.split(b"\n")[:-1]
    return sorted(lines)


def diff_summary(got: list[bytes], want: list[bytes]) -> str:
    """A short account of how two sorted line lists differ."""
    from collections import Counter
    g, w = Counter(got), Counter(want)
    missing, extra = w - g, g - w
    return (f"{len(got)} lines committed, {len(want)} expected; {sum(missing.values())} missing "
            f"(e.g. {sorted(missing)[:8]}), {sum(extra.values())} unexpected or repeated "
            f"(e.g. {sorted(extra)[:8]})")


def per_key(lines: list[bytes]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for line in lines:
        key, _, value = line.decode().rpartition(" ")
        out[key].append(int(value))
    return out


def resilient_argv(target: str, workers: int, rdir: Path, app_args: list[str],
                   interval_ns: int = INTERVAL_NS) -> list[str]:
    return [WALLAROO_RUN, "--app", f"{APP}:{target}", "--workers", str(workers),
            "--run-with-resilience", "--resilience-dir", str(rdir),
            "--time-between-checkpoints", str(interval_ns), *app_args]


def start(processes, argv: list[str], cwd: Path, name: str = "wallaroo-run") -> Proc:
    """Start ``argv`` (its own session: the supervisor and its workers form a process group)."""
    return processes(argv, name=name, cwd=cwd, env=app_env(), timeout=20.0)


def crash_free(tmp_path: Path, target: str, workers: int, app_args: list[str],
               output_flag: str = "--output") -> list[bytes]:
    """The sorted committed lines of a run of ``target`` with no kill (resilience on, its own
    resilience dir and output, no slow-down): exit 0 expected."""
    folder = tmp_path / "crash-free"
    folder.mkdir(exist_ok=True)
    rdir = folder / "resilience"
    rdir.mkdir(exist_ok=True)
    output = folder / "out.txt"
    args = list(app_args)
    args[args.index(output_flag) + 1] = str(output)
    if "--slow" in args:
        args[args.index("--slow") + 1] = "0"
    result = run_cli(*resilient_argv(target, workers, rdir, args)[1:], cwd=folder, timeout=60)
    assert result.returncode == 0, (f"the crash-free run exited with {result.returncode}:\n"
                                    f"{result.stderr.decode(errors='replace')}")
    return committed_lines(output)


def count_lines(proc: Proc, regex: re.Pattern) -> list[re.Match]:
    return [m for line in proc.stderr_lines if (m := regex.search(line))]


def wait_lines(proc: Proc, regex: re.Pattern, count: int, timeout: float) -> list[re.Match] | None:
    """The matches once ``count`` stderr lines match ``regex``; None if the process ended
    first; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = count_lines(proc, regex)
        if len(found) >= count:
            return found
        if proc.poll() is not None:
            time.sleep(0.2)       # its last lines
            found = count_lines(proc, regex)
            return found if len(found) >= count else None
        assert time.monotonic() < deadline, (
            f"fewer than {count} lines matching {regex.pattern!r} within {timeout:g} s\n"
            f"{proc.describe()}")
        time.sleep(0.02)


def current_workers(proc: Proc, restarts: int) -> list[int]:
    """The worker pids (index order) of the supervisor's startup line, or of its
    ``restarts``-th "recovered" line; they must be its children."""
    if restarts == 0:
        match = proc.wait_stderr(STARTUP_RE)
        workers = WORKERS_RE.search(match.group(0))
        assert workers, f"no '| N workers (pids ...)' in the startup line:\n{match.group(0)}"
    else:
        workers = count_lines(proc, RECOVERED_RE)[restarts - 1]
    pids = [int(p) for p in workers["pids"].split(", ")]
    children = {c.pid for c in psutil.Process(proc.pid).children()}
    assert set(pids) <= children, f"workers {pids} are not all children of {proc.pid}: {children}"
    return pids


def kill_random_workers(proc: Proc, kills: int, rng: random.Random, seed: int,
                        gap: tuple[float, float], stop_when_done: bool = False) -> int:
    """SIGKILL a random worker ``kills`` times, each a random ``gap`` seconds after the workers
    are (again) running; after each, the supervisor must say who went away and recover. Returns
    how many kills were made (fewer only with ``stop_when_done``, once the run has ended)."""
    made = 0
    for k in range(kills):
        pids = current_workers(proc, made)
        time.sleep(rng.uniform(*gap))
        if proc.poll() is not None:
            assert stop_when_done, (f"the run ended after {made} of {kills} kills (seed {seed})\n"
                                    f"{proc.describe()}")
            break
        index = rng.randrange(len(pids))
        if not psutil.pid_exists(pids[index]) or psutil.Process(pids[index]).status() == "zombie":
            assert stop_when_done, f"worker {pids[index]} is gone (seed {seed})\n{proc.describe()}"
            break
        os.kill(pids[index], signal.SIGKILL)
        made += 1
        print(f"kill {made}: worker-{index} (pid {pids[index]})")
        went = wait_lines(proc, re.compile(WENT_AWAY_RE.format(index=index, pid=pids[index])),
                          1, 15)
        if went is None and stop_when_done:   # the run was over before the kill
            break
        assert went, f"no 'went away' line for kill {made} (seed {seed})\n{proc.describe()}"
        recovered = wait_lines(proc, RECOVERED_RE, made, 20)
        if recovered is None:
            assert stop_when_done, (f"no recovery after kill {made} (seed {seed})\n"
                                    f"{proc.describe()}")
            break
        assert f"restarting the {len(pids)} workers (restart {made})" in proc.stderr, proc.describe()
    return made


def checkpoint_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("checkpoint-*.ckpt")) if folder.is_dir() else []


def committed_id(folder: Path) -> int | None:
    """The checkpoint a worker's ``committed`` record names (4-byte CRC, then JSON)."""
    import json
    try:
        data = (folder / "committed").read_bytes()
    except FileNotFoundError:
        return None
    try:
        return json.loads(data[4:])["checkpoint"]
    except ValueError:
        return None


def id_of(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


# ---------------------------------------------------------------------------------------------
# 1. word count, 2 workers, 5 random kills

@pytest.mark.timeout(120)
def test_word_count_survives_random_kills(processes, tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    source = word_input(tmp_path / "in.txt", 200_000, seed=seed)
    output = tmp_path / "out.txt"
    rdir = tmp_path / "resilience"
    rdir.mkdir()
    args = ["--input", str(source), "--output", str(output), "--slow", "20"]
    want = crash_free(tmp_path, "word_count", 2, args)
    assert want == model_word_count(source), "the crash-free run is not a word count"

    proc = start(processes, resilient_argv("word_count", 2, rdir, args), tmp_path)
    kills = kill_random_workers(proc, 5, rng, seed, gap=(0.3, 1.5))
    assert kills == 5
    code = proc.wait(RUN_TIMEOUT)
    assert code == 0, f"seed {seed}\n{proc.describe()}"
    got = committed_lines(output)
    assert got == want, f"seed {seed}: {diff_summary(got, want)}\n{proc.describe()}"
    assert not pending_files(output), pending_files(output)
    assert not any((rdir / WC_NAME).glob("*/*")), "a clean end leaves no checkpoint file"


# ---------------------------------------------------------------------------------------------
# 2. sequences, 3 workers, up to 20 random kills

@pytest.mark.timeout(120)
def test_sequences_survive_twenty_random_kills(processes, tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    # --slow 50: a generator batch (1024 values) takes about 25 ms, so a checkpoint's barrier
    # is aligned within a few batches and rounds complete between kills
    total, keys, workers = 400_000, 200, 3
    output = tmp_path / "seq.txt"
    rdir = tmp_path / "resilience"
    rdir.mkdir()
    args = ["--total", str(total), "--keys", str(keys), "--output", str(output), "--slow", "50"]
    proc = start(processes, resilient_argv("sequences", workers, rdir, args), tmp_path)
    kills = kill_random_workers(proc, 20, rng, seed, gap=(0.1, 1.0), stop_when_done=True)
    print(f"{kills} kills")
    try:
        code = proc.wait(RUN_TIMEOUT)
    except AssertionError as exc:
        left = sorted(str(p.relative_to(rdir)) for p in rdir.rglob("*"))
        committed = sum(p.stat().st_size for p in sink_files(output))
        raise AssertionError(f"seed {seed}, {kills} kills: the run did not end; committed output "
                             f"{committed} bytes; resilience dir: {left}\n{exc}") from None
    assert code == 0, f"seed {seed}, {kills} kills\n{proc.describe()}"
    assert not pending_files(output), pending_files(output)

    parts = {p: per_key(p.read_bytes().split(b"\n")[:-1]) for p in sink_files(output)}
    owner: dict[str, Path] = {}
    seqs: dict[str, list[int]] = {}
    for path, found in parts.items():
        for key, values in found.items():
            assert key not in owner, f"{key} is in {owner[key].name} and in {path.name} (seed {seed})"
            owner[key] = path
            seqs[key] = values
    want = {f"k{j}": total // keys + (1 if j < total % keys else 0) for j in range(keys)}
    assert set(seqs) == set(want), (f"seed {seed}: keys missing {sorted(set(want) - set(seqs))[:10]}, "
                                    f"unexpected {sorted(set(seqs) - set(want))[:10]}")
    bad = {}
    for key, values in seqs.items():
        if values != list(range(1, want[key] + 1)):
            first = next((i for i, (a, b) in enumerate(zip(values, range(1, want[key] + 1)))
                          if a != b), min(len(values), want[key]))
            bad[key] = (f"{len(values)} values, want 1..{want[key]}; from position {first}: "
                        f"{values[max(0, first - 2):first + 5]}")
    assert not bad, (f"seed {seed}, {kills} kills: {len(bad)} keys are not exactly 1..N in "
                     f"order: {dict(list(bad.items())[:6])}\n{proc.describe()}")


# ---------------------------------------------------------------------------------------------
# 3. a damaged checkpoint

def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    else:
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_damaged_checkpoint_goes_back_to_the_previous_one(processes, tmp_path, how):
    source = word_input(tmp_path / "in.txt", 400_000, seed=7)
    output = tmp_path / "out.txt"
    rdir = tmp_path / "resilience"
    rdir.mkdir()
    args = ["--input", str(source), "--output", str(output), "--slow", "20"]
    want = crash_free(tmp_path, "word_count", 2, args)
    argv = resilient_argv("word_count", 2, rdir, args)
    folders = [rdir / WC_NAME / f"worker-{i}" for i in range(2)]

    first = start(processes, argv, tmp_path, name="wallaroo-run (first)")
    pids = current_workers(first, 0)

    def ready():   # worker-1 has two checkpoint files and a record of a complete one
        files = checkpoint_files(folders[1])
        done = committed_id(folders[1])
        return len(files) >= 2 and done is not None and done >= 2

    deadline = time.monotonic() + 40
    while not ready():
        assert first.poll() is None, f"the run ended before two checkpoints\n{first.describe()}"
        assert time.monotonic() < deadline, f"no two checkpoints in 40 s\n{first.describe()}"
        time.sleep(0.01)
    os.killpg(first.pid, signal.SIGKILL)          # the supervisor and every worker at once
    assert first.wait(10) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived the kill"
        time.sleep(0.05)

    # the checkpoint a restart would restore: the last complete one (any worker's record)
    latest = max(committed_id(f) or 0 for f in folders)
    ids = [{id_of(p) for p in checkpoint_files(f)} for f in folders]
    assert latest in ids[1], f"checkpoint {latest} is not on worker-1: {ids}"
    previous = max(n for n in ids[0] & ids[1] if n < latest)
    target = folders[1] / f"checkpoint-{latest:012d}.ckpt"
    damage(target, how)
    print(f"{how} {target.name}; expecting checkpoint {previous}")

    again = start(processes, argv, tmp_path, name="wallaroo-run (restart)")
    code = again.wait(RUN_TIMEOUT)
    assert code == 0, again.describe()
    assert (f"checkpoint {latest} is damaged on some worker: going back to checkpoint {previous}"
            in again.stderr), again.describe()
    restored = {int(m["worker"]): int(m["id"]) for m in count_lines(again, RESTORED_RE)}
    assert restored == {0: previous, 1: previous}, again.describe()
    got = committed_lines(output)
    assert got == want, f"{diff_summary(got, want)}\n{again.describe()}"
    assert not pending_files(output)


# ---------------------------------------------------------------------------------------------
# 4. a missing resilience dir

def test_missing_resilience_dir_exits_2(tmp_path):
    source = word_input(tmp_path / "in.txt", 100, seed=1)
    missing = tmp_path / "no-such-dir"
    result = run_cli(*resilient_argv("word_count", 2, missing, [
        "--input", str(source), "--output", str(tmp_path / "out.txt")])[1:], cwd=tmp_path, timeout=30)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2, stderr
    assert "--resilience-dir" in stderr and str(missing) in stderr, stderr
    assert not missing.exists()
    assert not any(tmp_path.glob("out.txt*")) or all(
        p.stat().st_size == 0 for p in tmp_path.glob("out.txt*")), "nothing was committed"


# ---------------------------------------------------------------------------------------------
# 5. a full or read-only resilience dir (root: tmpfs)

@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs mounted on tmp_path/"resilience" (root only); unmounted in teardown."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (this runs as uid {os.geteuid()})")
    if shutil.which("mount") is None:
        pytest.skip("no 'mount' command")
    point = tmp_path / "resilience"
    point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)],
                          capture_output=True, text=True, timeout=20)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=20)


def remount(point: Path, options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", "-o", f"remount,{options}", str(point)],
                          capture_output=True, text=True, timeout=20)


def check_committed_prefixes(output: Path, source: Path) -> int:
    """The committed output is a word count cut at a checkpoint: every word's counts are 1..n
    with no gap, n at most its total. The number of lines."""
    totals = defaultdict(int)
    for word in source.read_text().split():
        totals[word] += 1
    seen = per_key(committed_lines(output))
    for word, counts in seen.items():
        assert word in totals, word
        counts.sort()
        assert counts == list(range(1, len(counts) + 1)) and len(counts) <= totals[word], (
            word, counts[:20])
    return sum(len(c) for c in seen.values())


def full_disk_input(path: Path) -> Path:
    """Lines over 40 words first, then lines of words seen once (more keys than 64 KiB of
    checkpoints can hold), in each half of the file (one per worker)."""
    rng = random.Random(3)
    half = []
    for _ in range(60_000):
        half.append(" ".join(f"s{rng.randrange(40)}" for _ in range(rng.randint(1, 8))))
    unique = iter(range(10**9))
    for _ in range(20_000):
        half.append(" ".join(f"u{next(unique)}" for _ in range(3)))
    second = [line.replace("u", "v") for line in half]
    path.write_text("\n".join(half + second) + "\n")
    return path


@pytest.mark.timeout(120)
def test_full_resilience_dir_stops_then_recovers(processes, tmp_path, tmpfs):
    source = full_disk_input(tmp_path / "in.txt")
    output = tmp_path / "out.txt"
    args = ["--input", str(source), "--output", str(output), "--slow", "20"]
    want = crash_free(tmp_path, "word_count", 2, args)
    argv = resilient_argv("word_count", 2, tmpfs, args)

    first = start(processes, argv, tmp_path, name="wallaroo-run (full disk)")
    assert first.wait(RUN_TIMEOUT) == 1, first.describe()
    message = next((line for line in first.stderr_lines if "cannot write checkpoints to" in line), None)
    assert message is not None, first.describe()
    assert "No space left on device" in message, message
    assert "free space or fix the permissions of --resilience-dir" in message, message
    lines = check_committed_prefixes(output, source)
    print(f"committed before the disk was full: {lines} lines")

    assert remount(tmpfs, "size=64m").returncode == 0
    again = start(processes, argv, tmp_path, name="wallaroo-run (after remount)")
    assert again.wait(RUN_TIMEOUT) == 0, again.describe()
    got = committed_lines(output)
    assert got == want, f"{diff_summary(got, want)}\n{again.describe()}"


@pytest.mark.timeout(120)
def test_read_only_resilience_dir_stops_then_recovers(processes, tmp_path, tmpfs):
    assert remount(tmpfs, "size=64m").returncode == 0
    source = word_input(tmp_path / "in.txt", 400_000, seed=11)
    output = tmp_path / "out.txt"
    args = ["--input", str(source), "--output", str(output), "--slow", "20"]
    want = crash_free(tmp_path, "word_count", 2, args)
    argv = resilient_argv("word_count", 2, tmpfs, args)
    folder = tmpfs / WC_NAME / "worker-0"

    first = start(processes, argv, tmp_path, name="wallaroo-run (read-only)")
    deadline = time.monotonic() + 40
    while committed_id(folder) is None:
        assert first.poll() is None, f"the run ended before a checkpoint\n{first.describe()}"
        assert time.monotonic() < deadline, first.describe()
        time.sleep(0.01)
    ro = remount(tmpfs, "ro")
    if ro.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {ro.stderr.strip()}")
    try:
        assert first.wait(RUN_TIMEOUT) == 1, first.describe()
    finally:
        assert remount(tmpfs, "rw").returncode == 0
    message = next((line for line in first.stderr_lines if "cannot write checkpoints to" in line), None)
    assert message is not None, first.describe()
    assert "Read-only file system" in message, message
    check_committed_prefixes(output, source)

    again = start(processes, argv, tmp_path, name="wallaroo-run (after rw)")
    assert again.wait(RUN_TIMEOUT) == 0, again.describe()
    got = committed_lines(output)
    assert got == want, f"{diff_summary(got, want)}\n{again.describe()}"


# ---------------------------------------------------------------------------------------------
# 6. a TCP source cannot replay

@pytest.mark.parametrize("workers,port", [(1, "0"), (1, "fixed"), (2, "0")])
def test_tcp_source_is_named_as_not_replayable(processes, tmp_path, workers, port):
    """The startup log names the TCP source as unable to replay; the run then works (what
    it takes is committed at checkpoints) and stops cleanly. Port 0 is what the other e2e
    tests use; a fixed port is picked free here."""
    rdir = tmp_path / "resilience"
    rdir.mkdir()
    output = tmp_path / "out.txt"
    listen = "0"
    if port == "fixed":
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            listen = str(probe.getsockname()[1])
    proc = start(processes, resilient_argv("tcp_word_count", workers, rdir, [
        "--in", f"lines@{HOST}:{listen}", "--output", str(output)]), tmp_path)
    warning = proc.wait_stderr(r"cannot replay").string
    assert "resilience: source 'lines' (tcp) cannot replay" in warning, warning
    assert "what it took since the last checkpoint is lost" in warning, warning
    match, ports = proc.startup()
    # the file sink is exactly-once: no at-least-once note for it
    assert "at-least-once" not in proc.stderr, proc.describe()
    with socket.create_connection((HOST, ports["lines"]), timeout=5) as conn:
        conn.sendall(frame("a b a") + frame("c a"))
    deadline = time.monotonic() + 10
    while committed_lines(output) != sorted([b"a 1", b"a 2", b"a 3", b"b 1", b"c 1"]):
        assert time.monotonic() < deadline, f"{committed_lines(output)}\n{proc.describe()}"
        time.sleep(0.05)
    proc.signal(signal.SIGTERM)
    assert proc.wait(15) == 0, proc.describe()
