"""`shard_dataset`: a dataset folder -> WebDataset shards + DALI indices + manifest.

Flow: scan the layout into an ordered work list -> encode items with
`workers` ffmpeg processes at a time (driven by threads; results consumed
strictly in input order) -> append samples to the
split's open shard -> commit each finished shard (atomic rename, then the
resume state). Shard membership therefore depends only on the inputs and
settings, never on the worker count or on timing.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import itertools
import os
import resource
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.splits import split_order
from pipeline.display import partial_words
from pipeline.errors import ShardingError
from pipeline.shard.ffmpeg import find_ffmpeg, has_encoder
from pipeline.io import storage
from pipeline.format.sample_index import INDEX_DIR
from pipeline.shard.layouts import WorkItem, scan
from pipeline.shard import manifest as mf
from pipeline.shard.encode import Outcome, reject_without_encoding
from pipeline.shard.engines import done, make_engine
from pipeline.shard.lock import OutputLock
from pipeline.shard.source import scan_url
from pipeline.shard.manifest import ShardRecord, SplitProgress
from pipeline.shard.append import Folder, append_plan, change_message, read_folder
from pipeline.shard.options import ShardOptions
from pipeline.shard.plan import Plan, make_plan
from pipeline.io.files import is_temp_name
from pipeline.format.tar import tar_file_size


class RejectedInputsError(ShardingError):
    """`strict=True` and some inputs were rejected; outputs are written all the same."""

    def __init__(self, report: ShardReport):
        partly = (
            (
                f"; {len(report.warnings)} sharded input(s) decode only partly (an earlier run without strict "
                f"mode sharded them; see {report.location(mf.WARNINGS)})"
            )
            if report.warnings
            else ""
        )
        super().__init__(
            f"{len(report.rejected)} input(s) rejected (strict mode); see {report.location(mf.REJECTED)}{partly}"
        )
        self.report = report


@dataclass
class ShardReport:
    out: Path
    layout: str
    classes: list[str]
    shards: list[ShardRecord]
    rejected: list[dict]
    inputs: int
    resumed_shards: int = 0
    encoded: int = 0  # inputs ffmpeg encoded in this call (not reused from staging, not rejected before encoding)
    wall_s: float = 0.0
    manifest: dict = field(default_factory=dict)
    warnings: list[dict] = field(default_factory=list)  # sharded, but imperfect (partly decodable, frame gaps)
    destination: str | None = None  # the URL the shards were uploaded to (out is then the local work folder)

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.shards)

    @property
    def per_split(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for r in self.shards:
            counts[r.split] += r.samples
        return dict(counts)

    @property
    def manifest_path(self) -> Path:
        return self.out / mf.MANIFEST

    def location(self, name: str) -> str | Path:
        """Where the run's file `name` is for the user: in the bucket for a URL output, else in `out`."""
        return storage.join(self.destination, name) if self.destination else self.out / name


def job_size(inputs: int, workers: int, most: int) -> int:
    """Inputs per encode job: one for a small run (every worker busy at once), up to `most` (the engine's)
    once there are at least four jobs per worker, so that a job's cost to the coordinator is shared (pure)."""
    return max(1, min(most, inputs // (4 * max(1, workers))))


def ordered(
    items: Iterable[tuple[int, WorkItem]],
    early: Callable[[WorkItem], Outcome | None],
    submit: Callable[[list[WorkItem]], Future],
    window: int,
    job: int = 1,
) -> Iterator[tuple[int, WorkItem, Outcome]]:
    """Results in input order, jobs of up to `job` consecutive inputs, at most `window` inputs in flight:
    order never depends on timing. `early` rejects an input without a job (e.g. a file that is not there)."""
    pending: deque[tuple[list[tuple[int, WorkItem, Outcome | None]], Future]] = deque()
    it = iter(items)
    while True:
        while len(pending) * job < max(window, job):
            batch = [(ordinal, item, early(item)) for ordinal, item in itertools.islice(it, job)]
            if not batch:
                break
            work = [item for _, item, rejected in batch if rejected is None]
            pending.append((batch, submit(work) if work else done([])))
        if not pending:
            return
        batch, fut = pending.popleft()
        results = iter(fut.result())
        for ordinal, item, rejected in batch:
            yield ordinal, item, rejected if rejected is not None else next(results)


def _prepare_out(out: Path, plan: Plan, overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    foreign = mf.local_foreign_outputs(out)
    if foreign and not overwrite:
        raise ShardingError(_foreign_message(str(out), foreign))
    previous = mf.existing_fingerprint(out)
    if foreign or (previous is not None and previous != plan.fingerprint and previous not in plan.accepts):
        if not overwrite:
            raise ShardingError(_other_run_message(out, plan))
        remove_outputs(out)
    # Leftovers of a killed run: hidden temp files never become final, so drop them.
    for folder in (out, out / mf.STAGING):
        for p in folder.glob(".*") if folder.is_dir() else []:
            if is_temp_name(p.name) and p.is_file():
                p.unlink(missing_ok=True)


def _other_run_message(location: str | Path, plan: Plan) -> str:
    """Why `location` is refused: what changed since the run that made it (or that it holds an unfinished
    run of other inputs or settings)."""
    folder = read_folder(location)
    if folder is None or mf.existing_fingerprint(Path(location)) not in (None, folder.manifest["fingerprint"]):
        return (
            f"{location} holds an unfinished run of other inputs or settings: rerun that command to finish it, "
            "use a new --out, or pass --overwrite to replace it"
        )
    return change_message(folder, plan)


def _foreign_message(out: str, foreign: list[str]) -> str:
    return (
        f"{out} holds {len(foreign)} file(s) that `python -m pipeline.shard` did not write, under names it "
        f"writes: {mf.describe_names(foreign)}. Nothing was changed. Use a new --out, or pass --overwrite to "
        "replace them (files under other names are never touched)"
    )


def remove_outputs(out: Path) -> None:
    """Delete everything `pipeline.shard` writes in `out` (and nothing else)."""
    for p in out.iterdir():
        if p.is_file() and (mf.is_output_name(p.name) or p.name == mf.STATE):
            p.unlink()
    shutil.rmtree(out / mf.STAGING, ignore_errors=True)
    shutil.rmtree(out / INDEX_DIR, ignore_errors=True)  # the loader's index cache of the old shards


def _remove_stale_shards(out: Path, records: list[ShardRecord]) -> None:
    keep = {r.file for r in records} | {r.index for r in records}
    for p in out.iterdir():
        if mf.SHARD_RE.match(p.name) and p.name not in keep:
            p.unlink()


def sharding_note(item: WorkItem, o: Outcome) -> dict | None:
    """What warnings.jsonl says of an input sharded although imperfect (--strict rejects it instead): one that
    decodes to far fewer frames than its container claims, or a frame folder with a gap in its numbering."""
    if o.partial:
        return {
            "source": item.rel,
            "reason": "partly_decodable",
            "split": item.split,
            "decoded_frames": o.frames,
            "claimed_frames": o.claimed_frames,
            "message": f"{item.rel}: {partial_words(o.frames, o.claimed_frames)}; sharded as decoded",
        }
    if o.ok and o.missing_frames:
        return {
            "source": item.rel,
            "reason": "frame_gap",
            "split": item.split,
            "missing": o.missing_frames,
            "message": f"{item.rel}: frames {o.missing_frames} are missing from its numbering; its {o.frames} "
            "frames are kept in order",
        }
    return None


@dataclass
class _Open:
    """A split's shard being filled: its fragments in order, their size and class counts."""

    name: str
    fragments: list = field(default_factory=list)
    size: int = 0
    per_class: Counter = field(default_factory=Counter)


@dataclass
class _Taken:
    """What a split took since its last shard was closed: committed with the next one (or at the end)."""

    rejected: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    through: int | None = None
    staged: list[str] = field(default_factory=list)  # staged records and fragments, deleted once committed


@dataclass
class _Closed:
    """A closed shard on its way (its pack job), or, with no pack, what a split took after its last shard."""

    split: str
    pack: Future | None
    open: _Open | None
    taken: _Taken


class _Run:
    """One sharding pass: which sample goes into which shard, and committing packed shards in order.

    Membership is decided here from the outcomes' fragment sizes alone; each
    closed shard is packed by the engine (in parallel with the encodes and
    with other packs), and committed to the resume state strictly in order
    per split, so the state always describes a prefix of the work.
    """

    def __init__(
        self,
        out: Path,
        opts: ShardOptions,
        labels: dict[str, int],
        progress: dict[str, SplitProgress],
        fp: str,
        engine,
        remote: str | None = None,
    ):
        self.out, self.labels, self.progress, self.fp, self.engine = out, labels, progress, fp, engine
        self.remote = remote  # the shards are written there
        self.shard_size, self.shard_samples, self.strict = opts.shard_size, opts.shard_samples, opts.strict
        self.open: dict[str, _Open] = {}
        self.taken: dict[str, _Taken] = {}
        self.closed: deque[_Closed] = deque()
        self.rejected_count = 0
        self.worker_cpu_s = 0.0
        # Removals of committed work's staged files, run by the engine where the encodes run: unlinking a
        # fragment (megabytes for a video's JPEG frames) is kernel CPU charged to whichever process does it.
        self.removals: list = []

    def split(self, name: str) -> SplitProgress:
        return self.progress.setdefault(name, SplitProgress())

    def take(self, ordinal: int, item: WorkItem, o: Outcome) -> None:
        """Take one outcome (in input order): into the split's open shard, or its rejections."""
        self.worker_cpu_s += o.cpu_s
        note = sharding_note(item, o)
        if note is not None and self.strict:
            o = Outcome(item.key, reason=note["reason"], message=note["message"], fragment=o.fragment)
        shard = self.open.get(item.split)
        if o.ok and shard is not None and tar_file_size(shard.size + o.fragment_bytes) > self.shard_size:
            self.close(item.split)  # before taking this item: it opens the next shard
        taken = self.taken.setdefault(item.split, _Taken())  # committed with the shard that holds this item
        taken.through = ordinal
        taken.staged += [
            str(storage.join(self.engine.staging, f"{item.key}.json")),
            *([o.fragment] if o.fragment else []),
        ]
        if note is not None and not self.strict:
            taken.warnings.append(note)
        if not o.ok:
            self.rejected_count += 1
            taken.rejected.append({"source": item.rel, "reason": o.reason, "message": o.message, "split": item.split})
        else:
            self._add(item, o)
        self._commit_ready(block=False)

    def _add(self, item: WorkItem, o: Outcome) -> None:
        shard = self.open.get(item.split)
        if shard is None:
            queued = sum(c.split == item.split and c.open is not None for c in self.closed)
            shard = self.open[item.split] = _Open(
                mf.shard_name(item.split, len(self.split(item.split).shards) + queued)
            )
        shard.fragments.append(o.piece())
        shard.size += o.fragment_bytes
        shard.per_class[item.class_name] += 1
        if self.shard_samples and len(shard.fragments) >= self.shard_samples:
            self.close(item.split)  # closed now so the shard is written as early as possible

    def close(self, split: str) -> None:
        """Hand the split's open shard to the engine to pack, with what the split took since its last one."""
        shard = self.open.pop(split)
        dest = str(storage.join(self.remote, shard.name)) if self.remote else str(self.out / shard.name)
        self.closed.append(_Closed(split, self.engine.pack(dest, shard.fragments), shard, self.taken.pop(split)))

    def _commit_ready(self, block: bool) -> None:
        """Commit the closed shards whose packs are done, in order (all of them with `block`)."""
        while self.closed and (block or self.closed[0].pack is None or self.closed[0].pack.done()):
            self._commit(self.closed.popleft())

    def _commit(self, c: _Closed) -> None:
        sp = self.split(c.split)
        if c.pack is not None:
            info = c.pack.result()
            per_class = dict(sorted(c.open.per_class.items()))
            sp.shards.append(
                ShardRecord(c.split, info.file, info.index, info.samples, info.bytes, info.sha256, per_class)
            )
        sp.rejected += c.taken.rejected
        sp.warnings += c.taken.warnings
        if c.taken.through is not None:
            sp.through = c.taken.through
        mf.save_state(self.out, self.fp, self.progress)
        if c.taken.staged:
            self.removals = [f for f in self.removals if not f.done()]
            self.removals.append(self.engine.remove(c.taken.staged))

    def finish(self) -> None:
        for split in sorted(self.open):
            self.close(split)
        for split in sorted(self.taken):  # what came after a split's last shard: rejections, say
            self.closed.append(_Closed(split, None, None, self.taken.pop(split)))
        self._commit_ready(block=True)
        for removal in self.removals:
            # A removal that failed leaves staged files behind: the end of the run deletes the staging folder.
            removal.exception()

    def abort(self) -> None:
        """After a failure or an interrupt, once the engine has stopped: commit the shards whose packs did
        finish, in order, up to the first that did not (a rerun packs that one again, under its name)."""
        try:
            while self.closed and (self.closed[0].pack is None or self.closed[0].pack.done()):
                c = self.closed[0]
                if c.pack is not None and (c.pack.cancelled() or c.pack.exception() is not None):
                    break
                self._commit(self.closed.popleft())
        finally:
            # Removals the stopped engine did not run leave staged files of committed work, which a rerun never
            # reads (it starts after them) and deletes with the staging folder at its end.
            self.closed.clear()


def _restore(out: Path, fp: str, remote: str | None = None) -> dict[str, SplitProgress]:
    """Committed progress of an interrupted run, dropping any split whose shards are not intact.

    With a remote `out`, committed shards live in the bucket (the local copies are deleted
    once uploaded): each is checked there by size, and one still only local is uploaded now.
    """
    state = mf.load_state(out, fp) or {}
    if remote is None:
        return {name: sp for name, sp in state.items() if mf.shards_intact(out, sp.shards)}
    return {name: sp for name, sp in state.items() if all(_uploaded(out, remote, r) for r in sp.shards)}


def _uploaded(work: Path, remote: str, record: ShardRecord) -> bool:
    """Whether a committed shard is in the bucket at its size (uploading it now if it is still local)."""
    url = str(storage.join(remote, record.file))
    try:
        if storage.size_of(url) == record.bytes:
            return True
    except FileNotFoundError:
        pass
    if (work / record.file).is_file() and (work / record.file).stat().st_size == record.bytes:
        _upload_shard(work, remote, record.file, record.index)
        return True
    return False


def _upload_shard(work: Path, remote: str, tar: str, idx: str) -> None:
    """Index first, then the tar (as locally: a final tar always has its index), then drop the local copies."""
    for name in (idx, tar):
        storage.upload(work / name, str(storage.join(remote, name)))
    for name in (idx, tar):
        (work / name).unlink(missing_ok=True)


def _place(location: str | os.PathLike) -> str:
    """A comparable form of a folder or URL: resolved path, or URL without trailing slashes (pure for URLs)."""
    if storage.is_remote(location):
        return str(location).rstrip("/")
    return str(Path(location).expanduser().resolve())


def same_place(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return _place(a) == _place(b)


def inside(out: str | os.PathLike, src: str | os.PathLike) -> bool:
    """Whether `out` is `src` or lies under it (folders or URLs of one store)."""
    o, s = _place(out), _place(src)
    return o == s or o.startswith(s.rstrip("/") + "/")


def default_work_dir(remote: str) -> Path:
    """Where shards bound for `remote` are made: the user's cache, one folder per destination."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tpn-toolkit" / "shard-work"
    return base / hashlib.sha256(remote.encode()).hexdigest()[:16]


def _check_remote_out(remote: str, work: Path, plan: Plan, overwrite: bool) -> None:
    """Refuse (or, with `overwrite`, clear) a URL output holding another run's or another tool's files."""
    try:
        names = storage.list_names(remote)
    except FileNotFoundError:
        names = []
    manifest = None
    if mf.MANIFEST in names:
        manifest = mf.own_manifest(storage.read_bytes(str(storage.join(remote, mf.MANIFEST))))
    foreign = mf.foreign_outputs(names, manifest, mf.claimed(work))
    if foreign and not overwrite:
        raise ShardingError(_foreign_message(remote, foreign))
    other_run = manifest is not None and manifest.get("fingerprint") not in (plan.fingerprint, *plan.accepts)
    if other_run and not overwrite:
        raise ShardingError(change_message(read_folder(remote), plan))
    if foreign or other_run:
        for name in names:
            if mf.is_output_name(name):
                storage.remove(str(storage.join(remote, name)))


def _encode_all(todo: list[tuple[int, WorkItem]], run: _Run, engine, *, progress: bool) -> int:
    """Encode `todo` on `engine` and feed results to `run` in input order; return how many inputs ffmpeg
    encoded in this call (not those reused from staging or rejected before encoding)."""
    from tqdm import tqdm

    def early(item: WorkItem) -> Outcome | None:
        rejected = reject_without_encoding(item)
        if rejected is None and item.class_name not in run.labels:
            rejected = Outcome(
                item.key,
                reason="unknown_class",
                message=f"class {item.class_name!r} is not in the class list; pass the full list with --classes",
            )
        return rejected

    def submit(work: list[WorkItem]) -> Future:
        return engine.submit([(item, run.labels[item.class_name]) for item in work])

    desc = "shard" if engine.name == "local" else f"shard ({engine.name}, {engine.workers} CPUs)"
    bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True, desc=desc)
    encoded = 0
    failed = False
    try:
        job = job_size(len(todo), engine.workers, engine.max_job)
        window = max(engine.window, 2 * engine.workers * job)  # two jobs per worker in flight, whatever their size
        for ordinal, item, outcome in ordered(todo, early, submit, window, job):
            encoded += outcome.fresh
            run.take(ordinal, item, outcome)
            bar.update(1)
            bar.set_postfix(rejected=run.rejected_count, refresh=False)
        run.finish()
    except BaseException:
        failed = True
        engine.close(failed)  # running jobs end first, then every finished pack is committed
        run.abort()
        raise
    finally:
        bar.close()
        engine.close(failed)
    return encoded


def shard_dataset(
    src: str | os.PathLike, out: str | os.PathLike, options: ShardOptions | None = None, **keywords
) -> ShardReport:
    """Transcode every video under `src` into WebDataset shards in `out`; resumable, deterministic.

    Takes a `ShardOptions`, or its flat keywords (those of the command line):
    `layout`, `split`, `annotations`, `classes`, `part`; `codec`, `short_side`,
    `size`, `fps`, `gop`, `quality`, `threads`; `shard_size`, `shard_samples`,
    `min_frames`, `timeout`, `seed`; `workers`, `engine`, `ray_address`,
    `work`, `strict`, `overwrite`, `progress`.

    Re-running the same call resumes: committed shards are kept and only the
    rest is encoded again. `out` may be a URL (s3://, gs://, az://, ...): shards
    are then written in the local `work` folder (default: one in the user's
    cache), uploaded as each is finished (object stores make an object visible
    only once complete, so no partial upload has a final name), and deleted
    locally; a resumed run re-uploads a committed shard the bucket lacks, and
    manifest.json goes up last. Returns a `ShardReport`; with `strict=True` raises
    `RejectedInputsError` (after writing everything) if any input was rejected; partly decodable
    inputs (far fewer frames than their container claims) are then rejected too, where otherwise
    they are sharded and listed in `warnings.jsonl`.

    `engine="ray"` runs the encodes as tasks of the Ray cluster at `ray_address` (else $RAY_ADDRESS, else a
    local Ray started for the call; see `pipeline.shard.engines`); the outputs are byte for byte those of
    `engine="local"`. One run writes to an output at a time (`pipeline.shard.lock`): a second is refused.
    """
    if options is not None and keywords:
        raise TypeError("pass either a ShardOptions or its keywords to shard_dataset, not both")
    opts = options if options is not None else ShardOptions.of(**keywords)
    t0 = time.perf_counter()
    if not storage.is_remote(out) and Path(out).exists() and not Path(out).is_dir():
        raise ShardingError(f"--out {out} is a file, not a folder: pass a folder for the shards (it is created)")
    if inside(out, src):
        raise ShardingError(
            f"--out {out} is {'the source itself' if same_place(out, src) else 'inside the source'} {src}: the "
            "shards would land among the dataset's own files; pass a folder (or prefix) outside it"
        )
    s = opts.encode
    exe = find_ffmpeg()
    if not has_encoder(exe, s.encoder):
        raise ShardingError(f"{exe} has no {s.encoder} encoder; install an ffmpeg built with it or set TPN_FFMPEG")
    scanner = scan_url if storage.is_remote(src) else scan  # a URL source: see pipeline.shard.source
    ds = scanner(src, opts.layout, split=opts.split, annotations=list(opts.annotations) or None, seed=opts.seed)
    # strict is not in the fingerprint: re-running a finished set with strict=True checks it. Partly
    # decodable inputs that run meets are rejected; ones an earlier run sharded fail the check below.
    plan = make_plan(ds, opts)
    remote = str(out) if storage.is_remote(out) else None
    out = Path(opts.work or default_work_dir(remote)).resolve() if remote else Path(out).resolve()
    # The engine first: an unreachable cluster is refused before anything is written.
    # Fragments are staged where the encodes can write and the packs read: beside the shards, or for a
    # cluster writing to a URL, under the URL.
    staging = storage.join(remote, mf.STAGING) if remote and opts.engine == "ray" else out / mf.STAGING
    runner = make_engine(opts, str(staging), items=len(plan.items))
    try:
        with contextlib.ExitStack() as held:
            for where in [out, remote] if remote else [out]:  # the local folder's lock creates it
                held.enter_context(OutputLock(where))
            return _shard_locked(plan, out, remote, runner, opts, t0)
    finally:
        runner.close()


def _shard_locked(plan: Plan, out: Path, remote: str | None, runner, opts: ShardOptions, t0: float) -> ShardReport:
    """The run itself, holding the output's lock."""
    if opts.append:
        folder = read_folder(remote or out)
        if folder is None:
            raise ShardingError(
                f"--append: {remote or out} holds no finished shards to add to; shard it first (without --append)"
            )
        plan = append_plan(folder, plan)
        if not plan.items:  # every input is in the folder already
            return _folder_report(folder, plan, out, remote)
    if remote:
        _check_remote_out(remote, out, plan, opts.overwrite)
    _prepare_out(out, plan, opts.overwrite)
    finished = None if remote else _finished_report(out, plan)
    if finished is not None:  # the same command ran to the end before: nothing to do
        if opts.strict and (finished.rejected or finished.warnings):
            raise RejectedInputsError(finished)
        return finished
    kept = _restore(out, plan.fingerprint, remote)
    if plan.base is not None:
        kept = _appending_from(out, remote, plan, kept)
    # Saved before any output: until the manifest, this claims the files under our names in `out` as this run's.
    mf.save_state(out, plan.fingerprint, kept)
    resumed = sum(len(sp.shards) for sp in kept.values())
    todo = [(n, it) for n, it in enumerate(plan.items) if n > kept.get(it.split, SplitProgress()).through]
    (out / mf.STAGING).mkdir(exist_ok=True)
    run = _Run(out, opts, {c: i for i, c in enumerate(plan.classes)}, kept, plan.fingerprint, runner, remote)
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    encoded = _encode_all(todo, run, runner, progress=opts.progress)
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {
        "coordinator_cpu_s": round(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, 3),
        "worker_cpu_s": round(run.worker_cpu_s, 3),  # the encodes' reported CPU (their packs not counted)
    }
    report = _finalize(
        out,
        run,
        plan,
        t0,
        {"engine": runner.name, "workers": runner.workers, "resumed_shards": resumed, "encoded": encoded, **cpu},
    )
    if remote:
        for name in (mf.CLASSES, mf.REJECTED, mf.WARNINGS, mf.INPUTS, mf.MANIFEST):  # the manifest last
            storage.upload(out / name, str(storage.join(remote, name)))
        report.destination = remote
    report.resumed_shards, report.encoded = resumed, encoded
    if opts.strict and (report.rejected or report.warnings):
        raise RejectedInputsError(report)
    return report


def _appending_from(out: Path, remote: str | None, plan: Plan, kept: dict[str, SplitProgress]):
    """An append's committed progress: per split, an interrupted append's resume state, else the folder's own
    shards. A folder missing a shard (or holding one of another size) is refused, so that no shard is ever
    left out of the record (a run removes the shards its record does not list)."""
    base = [r for sp in plan.base.values() for r in sp.shards]
    whole = all(_uploaded(out, remote, r) for r in base) if remote else mf.shards_intact(out, base)
    if not whole:
        where = remote or out
        raise ShardingError(
            f"--append: {where} is missing a shard, or holds one of another size than its manifest says; "
            f"check it with `python -m pipeline.verify {where}`"
        )
    return {**copy.deepcopy(plan.base), **kept}


def _folder_report(folder: Folder, plan: Plan, out: Path, remote: str | None) -> ShardReport:
    """The report of a finished folder as it is (an append that found nothing to add)."""
    records = [mf.ShardRecord(**r) for r in folder.manifest.get("shards", [])]
    return ShardReport(
        out,
        plan.layout,
        folder.classes,
        records,
        folder.rejected,
        len(folder.inputs or []),
        resumed_shards=len(records),
        manifest=folder.manifest,
        warnings=folder.warnings,
        destination=remote,
    )


def _finished_report(out: Path, plan: Plan) -> ShardReport | None:
    """The report of a finished run of the same command in `out` (its manifest, with every shard intact on
    disk), or None when there is work to do."""
    try:
        manifest = mf.read_manifest(out)
    except (FileNotFoundError, ValueError):
        return None
    if manifest.get("fingerprint") != plan.fingerprint:
        return None
    records = [mf.ShardRecord(**r) for r in manifest.get("shards", [])]
    if not mf.shards_intact(out, records):
        return None
    lists = [
        mf.read_jsonl((out / name).read_bytes()) if (out / name).is_file() else []
        for name in (mf.REJECTED, mf.WARNINGS)
    ]
    return ShardReport(
        out,
        plan.layout,
        plan.classes,
        records,
        lists[0],
        len(plan.inputs),
        resumed_shards=len(records),
        manifest=manifest,
        warnings=lists[1],
    )


def _finalize(out: Path, run: _Run, plan: Plan, t0: float, run_info: dict) -> ShardReport:
    order = sorted(run.progress, key=split_order)
    records = [r for split in order for r in run.progress[split].shards]
    rejected = [r for split in order for r in run.progress[split].rejected]
    warnings = [r for split in order for r in run.progress[split].warnings]
    wall = time.perf_counter() - t0
    info = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(wall, 3),
        "ffmpeg": find_ffmpeg(),
        **run_info,
    }
    manifest = mf.build_manifest(
        fp=plan.fingerprint,
        source=plan.source,
        settings=plan.settings,
        classes=plan.classes,
        records=records,
        rejected=rejected,
        inputs=len(plan.inputs),
        run=info,
        warnings=warnings,
    )
    mf.write_outputs(out, manifest, plan.classes, rejected, warnings, plan.inputs)
    _remove_stale_shards(out, records)
    # Finished: the folder holds only the dataset (a rerun finds the manifest, `_finished_report`). A remote
    # run's `out` is its local work folder: its state stays there for the next run's upload check.
    shutil.rmtree(out / mf.STAGING, ignore_errors=True)
    if storage.is_remote(run.engine.staging):
        storage.remove_tree(run.engine.staging)
    if run.remote is None:
        (out / mf.STATE).unlink(missing_ok=True)
    return ShardReport(
        out,
        plan.layout,
        plan.classes,
        records,
        rejected,
        len(plan.inputs),
        wall_s=wall,
        manifest=manifest,
        warnings=warnings,
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def summary_table(report: ShardReport) -> str:
    """The closing table: per split videos, shards, bytes and classes; rejections by reason; totals."""
    rows = [("split", "videos", "shards", "size", "classes")]
    for split, summary in report.manifest.get("splits", {}).items():
        rows.append(
            (
                split,
                str(summary["samples"]),
                str(summary["shards"]),
                human_bytes(summary["bytes"]),
                str(len(summary["per_class"])),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    by_reason = Counter(r["reason"] for r in report.rejected)
    if by_reason:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items()))
        lines.append(f"rejected {len(report.rejected)} ({detail}); see {report.location(mf.REJECTED)}")
    for note in report.manifest.get("source", {}).get("notes", []):  # folders or lists not used, ...
        lines.append(f"note: {note}")
    if report.warnings:
        kinds = Counter(w.get("reason", "partly_decodable") for w in report.warnings)
        what = {"partly_decodable": "decode only partly (fewer frames than their container claims)",
                "frame_gap": "have gaps in their frame numbering (kept in order)"}  # fmt: skip
        detail = "; ".join(f"{n} {what.get(k, k)}" for k, n in sorted(kinds.items()))
        lines.append(
            f"{len(report.warnings)} sharded input(s) are imperfect: {detail}; see {report.location(mf.WARNINGS)}, "
            "or re-run with --strict to reject them"
        )
    rate = report.encoded / report.wall_s if report.wall_s > 0 else 0.0
    lines.append(
        f"{report.samples} of {report.inputs} inputs sharded into {len(report.shards)} shard(s) in "
        f"{report.wall_s:.1f} s ({rate:.1f} videos/s encoded this run"
        + (f", {report.resumed_shards} shard(s) kept from an earlier run)" if report.resumed_shards else ")")
    )
    lines.append(f"manifest: {report.location(mf.MANIFEST)}")
    return "\n".join(lines)
