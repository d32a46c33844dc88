"""Models by name from the Hugging Face Hub: `owner/repo`, `owner/repo:TAG`, `hf://owner/repo/file.gguf`.

Everything goes through `huggingface_hub` and its cache (~/.cache/huggingface/hub, or HF_HUB_CACHE /
HF_HOME), so files are shared with transformers, llama.cpp and others, and its token, HF_ENDPOINT,
HF_HUB_OFFLINE and proxy settings apply as users expect.

Picking a file in a GGUF repo (as llama.cpp's `-hf repo:quant`):
- TAG is matched case-insensitively against the `*.gguf` names, as a whole word: `q4_k` matches
  `LFM2-Q4_K.gguf`, not `LFM2-Q4_K_M.gguf`;
- without a tag: Q4_K_M when the repo has it, else the smallest file of 4 bits or more;
- vision projectors (`mmproj-*`) are never picked; split files (`-00001-of-00003.gguf`) are
  refused with a one-line error (lfm2q loads single files; llama.cpp's gguf-split merges them).
Offline (HF_HUB_OFFLINE=1, or the Hub unreachable), the files already in the cache are picked from.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .errors import Lfm2qError, one_line

URL_PREFIX = "hf://"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# quantization names as llama.cpp writes them into file names, most specific first
_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q\d_K_[SMLX]L?|I?Q\d_(?:K|XXS|XS|S|M|NL|\d)|TQ\d_0|MXFP4|BF16|F16|F32)"
                    r"(?![A-Za-z0-9])", re.IGNORECASE)
DEFAULT_TAG = "Q4_K_M"
MIN_BITS = 4
# what `convert` reads from an HF checkpoint repo (convert/hf.py, convert/vocab.py)
CHECKPOINT_FILES = ["config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
                    "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "chat_template.jinja"]


class HubError(Lfm2qError):
    """A Hub name that cannot be resolved: no such repo, revision or file, or no network."""


@dataclass(frozen=True)
class HubRef:
    repo: str
    tag: Optional[str] = None
    filename: Optional[str] = None   # a path inside the repo (hf:// URLs)

    def __str__(self) -> str:
        return (f"{URL_PREFIX}{self.repo}/{self.filename}" if self.filename
                else f"{self.repo}:{self.tag}" if self.tag else self.repo)


@dataclass(frozen=True)
class HubFile:
    repo: str
    filename: str
    size: Optional[int]
    path: Path           # in the huggingface_hub cache
    picked: bool         # chosen by the default rule (no tag, no file given)


def quant_type(name: str) -> Optional[str]:
    """The quantization in a GGUF file name (`LFM2-1.2B-Q4_K_M.gguf` -> "Q4_K_M"), or None."""
    found = _QUANT.findall(Path(name).name)
    return found[-1].upper() if found else None


def quant_bits(qtype: Optional[str]) -> Optional[int]:
    if qtype is None:
        return None
    if qtype in ("F32",):
        return 32
    if qtype in ("F16", "BF16"):
        return 16
    if qtype == "MXFP4":
        return 4
    m = re.search(r"\d", qtype)
    return int(m.group()) if m else None


def is_hub_name(spec: object) -> bool:
    """Whether a model argument names a Hub repo rather than a local file.

    An existing path is always local; `hf://…` is always the Hub; otherwise `owner/repo` or
    `owner/repo:TAG` (not ending in .gguf) is a repo.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return False
    s = os.fspath(spec)
    if s.startswith(URL_PREFIX):
        return True
    if os.path.exists(s) or s.lower().endswith(".gguf"):
        return False
    return _REPO_ID.match(s.split(":", 1)[0]) is not None


def parse(spec: str) -> HubRef:
    """`owner/repo[:TAG]` or `hf://owner/repo[/path/file.gguf]` -> HubRef; bad names are a HubError."""
    s = os.fspath(spec)
    if s.startswith(URL_PREFIX):
        parts = s[len(URL_PREFIX):].strip("/").split("/")
        if len(parts) < 2:
            raise HubError(f"{s}: a Hub URL is hf://OWNER/REPO or hf://OWNER/REPO/FILE.gguf")
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
        tag = None
        if filename is None and ":" in repo:
            repo, tag = repo.split(":", 1)
    else:
        repo, _, tag = s.partition(":")
        filename, tag = None, tag or None
    if not _REPO_ID.match(repo):
        raise HubError(f"{s}: {repo!r} is not a Hub repo name (OWNER/REPO)")
    if tag is not None and not _TAG.match(tag):
        raise HubError(f"{s}: {tag!r} is not a quantization tag (letters, digits, _ . -)")
    return HubRef(repo, tag, filename)


# --- choosing a file --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Candidate:
    name: str            # the file, or the first part of a split set
    size: Optional[int]  # all parts together
    parts: int


def _candidates(files: dict[str, Optional[int]]) -> list[_Candidate]:
    """GGUF files of a repo (path -> size), split sets grouped under their first part."""
    out, sets = [], {}
    for name, size in sorted(files.items()):
        if not name.lower().endswith(".gguf") or Path(name).name.lower().startswith("mmproj"):
            continue
        m = _SPLIT.search(name)
        if m is None:
            out.append(_Candidate(name, size, 1))
            continue
        key = name[:m.start()]
        first, total, n = sets.get(key, (None, 0, int(m.group(2))))
        if m.group(1) == "00001":
            first = name
        total = None if total is None or size is None else total + size
        sets[key] = (first, total, n)
    out += [_Candidate(first or f"{key}-00001-of-{n:05d}.gguf", total, n) for key, (first, total, n) in sets.items()]
    return out


def _stem(name: str) -> str:
    base = Path(name).name
    m = _SPLIT.search(base)
    return base[:m.start()] if m else base[:-len(".gguf")]


def choose(files: dict[str, Optional[int]], ref: HubRef) -> tuple[str, bool]:
    """The file to load from a repo's listing (path -> size): (path, picked by the default rule)."""
    cands = _candidates(files)
    names = ", ".join(sorted(Path(c.name).name for c in cands)) or "none"
    if not cands:
        raise HubError(f"{ref.repo} has no GGUF files (found: {_some(files)}); lfm2q loads .gguf files — "
                       f"for an HF checkpoint use `lfm2q convert {ref.repo}`")
    if ref.tag:
        word = re.compile(rf"(?<![A-Za-z0-9]){re.escape(ref.tag)}(?![A-Za-z0-9_])", re.IGNORECASE)
        hits = [c for c in cands if word.search(_stem(c.name))]
        if not hits:
            raise HubError(f"{ref.repo} has no GGUF file tagged {ref.tag!r}; its GGUF files: {names}")
        best, picked = min(hits, key=lambda c: (len(c.name), c.name)), False
    else:
        q4km = [c for c in cands if quant_type(_stem(c.name)) == DEFAULT_TAG]
        ok = [c for c in cands if (quant_bits(quant_type(_stem(c.name))) or MIN_BITS) >= MIN_BITS]
        if q4km:
            best = min(q4km, key=lambda c: (len(c.name), c.name))
        elif ok:
            best = min(ok, key=lambda c: (c.size if c.size is not None else float("inf"), c.name))
        else:
            raise HubError(f"{ref.repo}: every GGUF file is below {MIN_BITS} bits; name one with "
                           f"{ref.repo}:TAG — its GGUF files: {names}")
        picked = True
    if best.parts > 1:
        raise HubError(f"{ref.repo}/{best.name} is split into {best.parts} parts; lfm2q loads single-file GGUFs "
                       f"— merge them with `llama-gguf-split --merge` or pick another file ({names})")
    return best.name, picked


def _some(files: Iterable[str], n: int = 6) -> str:
    names = sorted(files)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "") if names else "nothing"


# --- talking to the Hub -----------------------------------------------------------------------

def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _network_errors() -> tuple:
    """The exceptions meaning "the Hub cannot be reached", from whichever HTTP client this
    huggingface_hub uses (httpx2 in 2.x, httpx in 1.x, requests before)."""
    import importlib

    from huggingface_hub import errors as hf

    found: list = [hf.OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("ConnectError", "TimeoutException")), ("httpx", ("ConnectError", "TimeoutException")),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return tuple(found)


def _remote_files(repo: str, revision: Optional[str]) -> dict[str, Optional[int]]:
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    return {s.rfilename: s.size for s in (info.siblings or [])}


def _cached_revision(repo: str, revision: Optional[str]):
    """The cached snapshot of `repo` at `revision` (a branch, tag or commit; None = main), or None."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except CacheNotFound:
        return None
    want = revision or "main"
    for r in cache.repos:
        if r.repo_id == repo and r.repo_type == "model":
            for rev in r.revisions:
                if want in rev.refs or rev.commit_hash == want:
                    return rev
    return None


def _cached_files(repo: str, revision: Optional[str]) -> dict[str, Optional[int]]:
    rev = _cached_revision(repo, revision)
    if rev is None:
        return {}
    return {f.file_path.relative_to(rev.snapshot_path).as_posix(): f.size_on_disk for f in rev.files}


def _translate(e: Exception, ref: HubRef, revision: Optional[str], filename: Optional[str] = None) -> HubError:
    from huggingface_hub import errors as hf

    at = f" at revision {revision!r}" if revision else ""
    if isinstance(e, hf.GatedRepoError):
        return HubError(f"{ref.repo} is gated: accept its terms on the Hub and log in (`hf auth login`, or HF_TOKEN)")
    if isinstance(e, hf.RepositoryNotFoundError):
        local = "" if ref.filename or ref.tag else ", and no local file of that name"
        return HubError(f"{ref.repo}: no such model repo on the Hub{local} (if the repo is private, log in "
                        f"with `hf auth login` or set HF_TOKEN)")
    if isinstance(e, hf.RevisionNotFoundError):
        return HubError(f"{ref.repo} has no revision {revision!r} (use a branch, tag or commit of the repo)")
    if isinstance(e, hf.LocalEntryNotFoundError):
        what = f"{ref.repo}/{filename}" if filename else ref.repo
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hub cannot be reached"
        return HubError(f"{what}{at} is not in the cache and {why} — connect once to download it")
    if isinstance(e, hf.EntryNotFoundError):
        return HubError(f"{ref.repo} has no file {filename!r}{at}")
    return HubError(f"{ref}: download failed ({one_line(e)})")


def download(spec: str, revision: Optional[str] = None) -> HubFile:
    """Resolve a Hub name to a GGUF file in the cache, downloading it if needed."""
    from huggingface_hub import errors as hf
    from huggingface_hub import hf_hub_download

    ref = parse(spec)
    net_errors = _network_errors()
    filename, picked, files = ref.filename, False, {}
    if filename is None:
        files = {}
        if not _offline():
            try:
                files = _remote_files(ref.repo, revision)
            except net_errors:
                files = {}
            except (hf.HfHubHTTPError, hf.RepositoryNotFoundError) as e:
                raise _translate(e, ref, revision) from None
        if not files:
            files = _cached_files(ref.repo, revision)
            if not files:
                why = "HF_HUB_OFFLINE is set" if _offline() else "the Hub cannot be reached"
                raise HubError(f"{ref.repo} is not in the cache and {why} — connect once to download it")
        filename, picked = choose(files, ref)
    elif _SPLIT.search(filename):
        raise HubError(f"{ref.repo}/{filename} is one part of a split GGUF; lfm2q loads single-file GGUFs — "
                       "merge the parts with `llama-gguf-split --merge`")
    try:
        with _progress_on_terminal():
            if not _offline():
                try:
                    _fetch_blob_resumably(ref.repo, filename, revision)
                except net_errors:
                    pass  # hf_hub_download then takes the cached file, or says why it cannot
            path = hf_hub_download(ref.repo, filename, revision=revision)
    except (hf.HfHubHTTPError, hf.EntryNotFoundError, hf.OfflineModeIsEnabled, OSError, ValueError) as e:
        raise _translate(e, ref, revision, filename) from None
    return HubFile(ref.repo, filename, files.get(filename), Path(path), picked)


PART_SUFFIX = ".lfm2q-part"  # a GGUF's bytes so far, beside the blob it will become


def _fetch_blob_resumably(repo: str, filename: str, revision: Optional[str]) -> None:
    """Download a GGUF's blob into huggingface_hub's cache so that a stopped download (Ctrl-C, a
    killed process) continues where it stopped next time: huggingface_hub 2.x writes each
    download to a file of its own and deletes it on any failure, so a 1 GB file stopped at 90%
    would start over. The bytes go to `blobs/<etag>.lfm2q-part`, continued with an HTTP Range
    request, then renamed to `blobs/<etag>`; hf_hub_download then finds the blob and only links
    it into the snapshot (its cache layout, shared with every other tool)."""
    from filelock import FileLock
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import build_hf_headers

    meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision))
    if not meta.etag or meta.size is None or not meta.location:
        return  # nothing to resume against: hf_hub_download does it all
    blob = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "blobs" / meta.etag
    if blob.exists():
        return
    blob.parent.mkdir(parents=True, exist_ok=True)
    part = blob.with_name(blob.name + PART_SUFFIX)
    locks = Path(constants.HF_HUB_CACHE) / ".locks" / blob.parent.parent.name  # beside huggingface_hub's own
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / (blob.name + PART_SUFFIX + ".lock"))):
        if blob.exists():  # another process finished it meanwhile
            return
        have = part.stat().st_size if part.exists() else 0
        if have > meta.size:  # not this file's bytes: start over
            part.unlink()
            have = 0
        with open(part, "ab") as f:
            http_get(meta.location, f, resume_size=have, headers=build_hf_headers(),
                     expected_size=meta.size, displayed_filename=filename)
        os.replace(part, blob)


def download_checkpoint(spec: str, revision: Optional[str] = None) -> Path:
    """The folder of an HF checkpoint repo in the cache, with only the files `convert` reads."""
    from huggingface_hub import errors as hf
    from huggingface_hub import snapshot_download

    ref = parse(spec)
    if ref.tag or ref.filename:
        raise HubError(f"{spec}: convert takes a checkpoint repo (OWNER/REPO), not a file or tag")
    try:
        with _progress_on_terminal():
            return Path(snapshot_download(ref.repo, revision=revision, allow_patterns=CHECKPOINT_FILES))
    except (hf.HfHubHTTPError, hf.EntryNotFoundError, hf.OfflineModeIsEnabled, OSError, ValueError) as e:
        raise _translate(e, ref, revision) from None


class _progress_on_terminal:
    """huggingface_hub's progress bars on a terminal only (scripts' stderr stays clean)."""

    def __enter__(self):
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

        self.was = are_progress_bars_disabled()
        if not sys.stderr.isatty() and not self.was:
            disable_progress_bars()
        return self

    def __exit__(self, *exc):
        from huggingface_hub.utils import enable_progress_bars

        if not self.was:
            enable_progress_bars()


def describe(f: HubFile) -> str:
    """The line saying which file a Hub name resolved to."""
    size = f" ({f.size / 1e6:,.0f} MB)" if f.size else ""
    how = "picked" if f.picked else "using"
    return f"{how} {f.repo}/{f.filename}{size}"


# --- the cache: list and remove ---------------------------------------------------------------

@dataclass(frozen=True)
class CachedModel:
    repo: str
    filename: str
    size: int
    qtype: str
    revisions: tuple[str, ...]   # refs (or short commits) holding it
    path: Path


def cached_models() -> list[CachedModel]:
    """Every GGUF file in the huggingface_hub cache, by repo and file name."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except CacheNotFound:
        return []
    found: dict[tuple[str, str], CachedModel] = {}
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            names = tuple(sorted(rev.refs)) or (rev.commit_hash[:8],)
            for f in rev.files:
                rel = f.file_path.relative_to(rev.snapshot_path).as_posix()
                if not rel.lower().endswith(".gguf"):
                    continue
                key = (repo.repo_id, rel)
                old = found.get(key)
                revs = tuple(sorted(set(names) | set(old.revisions))) if old else names
                found[key] = CachedModel(repo.repo_id, rel, f.size_on_disk, quant_type(rel) or "—", revs,
                                         f.file_path)
    return sorted(found.values(), key=lambda m: (m.repo.lower(), m.filename))


def remove(spec: str) -> tuple[list[str], int]:
    """Remove a repo (`owner/repo`: every revision) or one of its GGUF files (`owner/repo:TAG`,
    `hf://owner/repo/file.gguf`) from the cache. Returns (what was removed, bytes freed)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    ref = parse(spec)
    try:
        cache = scan_cache_dir()
    except CacheNotFound:
        cache = None
    repo = next((r for r in (cache.repos if cache else ()) if r.repo_id == ref.repo and r.repo_type == "model"), None)
    if repo is None:
        have = sorted({m.repo for m in cached_models()})
        raise HubError(f"{ref.repo} is not in the cache (cached GGUF repos: {', '.join(have) or 'none'})")
    if not ref.tag and not ref.filename:
        strategy = cache.delete_revisions(*(rev.commit_hash for rev in repo.revisions))
        strategy.execute()
        return [ref.repo], strategy.expected_freed_size
    files = {m.filename: m.size for m in cached_models() if m.repo == ref.repo}
    name = ref.filename if ref.filename in files else None
    if name is None:
        if ref.filename:
            raise HubError(f"{ref.repo}/{ref.filename} is not in the cache; cached: {_some(files) if files else 'none'}")
        name, _ = choose(files, ref)
    return [f"{ref.repo}/{name}"], _remove_file(repo, name)


def _remove_file(repo, name: str) -> int:
    """Unlink `name` from every cached revision, and its blob once no snapshot points to it."""
    blobs, freed = set(), 0
    for rev in repo.revisions:
        for f in rev.files:
            if f.file_path.relative_to(rev.snapshot_path).as_posix() == name:
                blobs.add(f.blob_path)
                f.file_path.unlink(missing_ok=True)
    still = {f.blob_path for rev in repo.revisions for f in rev.files if f.file_path.exists()}
    for blob in blobs - still:
        try:
            freed += blob.stat().st_size
            blob.unlink()
        except FileNotFoundError:
            pass
    return freed


def resolve_model(spec, revision: Optional[str] = None, announce=None) -> Path:
    """A model argument as a local path: Hub names are downloaded (or found in the cache) first.

    `announce(line)` is told which file a Hub name resolved to.
    """
    if not is_hub_name(spec):
        if revision is not None:
            raise HubError(f"--revision {revision!r} applies to Hub names (OWNER/REPO[:TAG]), not to {spec}")
        return Path(spec)
    f = download(os.fspath(spec), revision)
    if announce is not None:
        announce(describe(f))
    return f.path
