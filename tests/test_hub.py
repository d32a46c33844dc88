"""Models by name from the Hub, against a fake Hub on 127.0.0.1 (tests/fake_hub.py) with the real
huggingface_hub client. The CLI runs as a subprocess: huggingface_hub reads HF_ENDPOINT, HF_HOME
and HF_HUB_OFFLINE when it is imported."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lfm2q
import sigint
from fake_hub import FakeHub
from lfm2q import hub

Q4 = lfm2q.builtin_model_path("q4_k_m")
Q8 = lfm2q.builtin_model_path("q8_0")
REPO = "LiquidAI/Tiny-GGUF"


def _env(fake: FakeHub | None, home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_ENABLE_HF_TRANSFER="0", HF_HUB_DISABLE_XET="1", **extra)
    env["HF_ENDPOINT"] = fake.endpoint if fake else "http://127.0.0.1:9"  # port 9: nothing listens
    return env


def lfm2q_cli(args: list[str], env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lfm2q", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def py(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def fake():
    f = FakeHub()
    f.add(REPO, {"README.md": b"# tiny\n", "tiny-Q4_K_M.gguf": Q4, "tiny-Q8_0.gguf": Q8,
                 "tiny-Q2_K.gguf": b"GGUF not really", "mmproj-tiny-F16.gguf": b"projector"})
    repo = f.repos[REPO]
    repo.refs["v1"] = repo.commit
    f.add("LiquidAI/Split-GGUF", {"big-F16-00001-of-00002.gguf": b"a" * 10, "big-F16-00002-of-00002.gguf": b"b" * 10})
    with f:
        yield f


# --- picking a file (pure) -----------------------------------------------------------------

def test_parse_names():
    assert hub.parse("LiquidAI/LFM2-1.2B-GGUF:Q8_0") == hub.HubRef("LiquidAI/LFM2-1.2B-GGUF", "Q8_0")
    assert hub.parse("hf://LiquidAI/LFM2-1.2B-GGUF/sub/LFM2-Q4_0.gguf") == \
        hub.HubRef("LiquidAI/LFM2-1.2B-GGUF", None, "sub/LFM2-Q4_0.gguf")
    assert hub.is_hub_name("LiquidAI/LFM2-1.2B-GGUF") and not hub.is_hub_name("models/x.gguf")
    assert not hub.is_hub_name(str(Q4))  # an existing path is local
    with pytest.raises(hub.HubError, match="a Hub URL is hf://OWNER/REPO"):
        hub.parse("hf://only-one-part/")
    with pytest.raises(hub.HubError, match="not a Hub repo name"):
        hub.parse("bad name/x")


def test_choose_default_and_tags():
    files = {"m-Q2_K.gguf": 10, "m-Q3_K_M.gguf": 20, "m-Q5_K_M.gguf": 50, "m-Q4_0.gguf": 40, "m-Q8_0.gguf": 80,
             "mmproj-m-F16.gguf": 5, "README.md": 1}
    assert hub.choose(files, hub.HubRef("a/b")) == ("m-Q4_0.gguf", True)  # smallest of >= 4 bits
    assert hub.choose({**files, "m-Q4_K_M.gguf": 45}, hub.HubRef("a/b")) == ("m-Q4_K_M.gguf", True)
    assert hub.choose(files, hub.HubRef("a/b", "q8_0")) == ("m-Q8_0.gguf", False)
    with pytest.raises(hub.HubError, match="no GGUF file tagged 'Q4_K'.*m-Q2_K.gguf, m-Q3_K_M.gguf"):
        hub.choose(files, hub.HubRef("a/b", "Q4_K"))  # whole words only: Q4_K is not Q4_K_M
    with pytest.raises(hub.HubError, match=r"split into 3 parts.*gguf-split"):
        hub.choose({f"m-F16-0000{i}-of-00003.gguf": 1 for i in (1, 2, 3)}, hub.HubRef("a/b"))


# --- the CLI against the fake Hub ----------------------------------------------------------

def test_download_cache_hit_offline_and_list_rm(fake, tmp_path):
    env = _env(fake, tmp_path)
    r = lfm2q_cli(["info", REPO], env)
    assert r.returncode == 0, r.stderr
    assert f"lfm2q: picked {REPO}/tiny-Q4_K_M.gguf" in r.stderr  # says which file it picked
    assert "architecture" in r.stdout and "lfm2" in r.stdout
    cached = next((tmp_path / "hub").rglob("tiny-Q4_K_M.gguf"))
    assert cached.read_bytes() == Q4.read_bytes()
    assert fake.count("GET", "/cdn/") == 1

    r = lfm2q_cli(["info", f"{REPO}:q8_0"], env)  # a tag, matched case-insensitively
    assert r.returncode == 0 and f"using {REPO}/tiny-Q8_0.gguf" in r.stderr, r.stderr
    r = lfm2q_cli(["info", f"hf://{REPO}/tiny-Q8_0.gguf", "--revision", "v1"], env)  # cache hit: no transfer
    assert r.returncode == 0, r.stderr
    assert fake.count("GET", "/cdn/") == 2
    assert (tmp_path / "hub" / "models--LiquidAI--Tiny-GGUF" / "refs" / "v1").read_text() == fake.repos[REPO].commit

    fake.stop()  # no network at all, and HF_HUB_OFFLINE: the cache answers
    r = lfm2q_cli(["info", REPO], _env(None, tmp_path, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr
    assert "picked" in r.stderr and "tiny-Q4_K_M.gguf" in r.stderr
    r = lfm2q_cli(["info", f"{REPO}:Q8_0"], _env(None, tmp_path))  # Hub unreachable, not declared offline
    assert r.returncode == 0, r.stderr

    r = lfm2q_cli(["list"], _env(None, tmp_path, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[:2] for row in rows] == [[REPO, "tiny-Q4_K_M.gguf"], [REPO, "tiny-Q8_0.gguf"]]
    assert rows[0][4] == "Q4_K_M" and " ".join(rows[0][5:]) == "main, v1"  # type, revisions
    r = lfm2q_cli(["rm", f"{REPO}:Q8_0"], _env(None, tmp_path, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0 and f"removed {REPO}/tiny-Q8_0.gguf" in r.stdout, r.stderr
    assert not list((tmp_path / "hub").rglob("tiny-Q8_0.gguf"))
    r = lfm2q_cli(["rm", REPO], _env(None, tmp_path, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0 and "freed" in r.stdout, r.stderr
    r = lfm2q_cli(["list"], _env(None, tmp_path, HF_HUB_OFFLINE="1"))
    assert "no GGUF models" in r.stdout
    r = lfm2q_cli(["info", REPO], _env(None, tmp_path, HF_HUB_OFFLINE="1"))
    assert r.returncode == 1 and r.stderr.strip() == \
        f"error: {REPO} is not in the cache and HF_HUB_OFFLINE is set — connect once to download it"


def test_errors_are_one_line(fake, tmp_path):
    env = _env(fake, tmp_path)
    for args, message in [
        (["info", "LiquidAI/Nope-GGUF"], "LiquidAI/Nope-GGUF: no such model repo on the Hub"),
        (["info", f"{REPO}:Q6_K"], f"{REPO} has no GGUF file tagged 'Q6_K'; its GGUF files: tiny-Q2_K.gguf, "
                                   "tiny-Q4_K_M.gguf, tiny-Q8_0.gguf"),
    ]:
        r = lfm2q_cli(args, env)
        assert r.returncode == 1, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: " + message), (args, r.stderr)
    # the other refusals, in one process (each is the same one-line HubError the CLI prints)
    cases = [("LiquidAI/Split-GGUF", None, "LiquidAI/Split-GGUF/big-F16-00001-of-00002.gguf is split into 2 parts"),
             (REPO, "v9", f"{REPO} has no revision 'v9'"),
             (f"hf://{REPO}/missing.gguf", None, f"{REPO} has no file 'missing.gguf'")]
    code = ("import json, sys\nfrom lfm2q import hub\nfor spec, rev in json.loads(sys.argv[1]):\n"
            "    try:\n        hub.download(spec, rev)\n    except hub.HubError as e:\n        print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, json.dumps([c[:2] for c in cases])], env=env,
                       capture_output=True, text=True, timeout=120)
    got = r.stdout.splitlines()
    assert len(got) == len(cases), r.stderr
    for line, (_, _, message) in zip(got, cases):
        assert line.startswith(message), line


def test_resume_after_a_cut_connection(tmp_path):
    # huggingface_hub writes 10 MiB chunks: the cut must come after at least one of them
    payload = hashlib.sha256(b"seed").digest() * (24 * 1024 * 1024 // 32)
    with FakeHub(cut_first_transfer=True) as fake:
        fake.add("LiquidAI/Big-GGUF", {"big-Q8_0.gguf": payload})
        r = py("from lfm2q import hub; print(hub.download('LiquidAI/Big-GGUF').path)", _env(fake, tmp_path))
        assert r.returncode == 0, r.stderr
        cdn = [(m, rng) for m, p, rng in fake.requests if p.startswith("/cdn/")]
    assert Path(r.stdout.strip()).read_bytes() == payload
    assert cdn == [("GET", None), ("GET", f"bytes={10 * 1024 * 1024}-")]  # continued where it stopped


def test_a_download_stopped_by_ctrl_c_continues_where_it_stopped(tmp_path):
    # huggingface_hub 2.x deletes its partial file on any failure; lfm2q keeps the bytes so far
    # beside the blob (hub.PART_SUFFIX) and asks for the rest with a Range request
    payload = hashlib.sha256(b"stop").digest() * (24 * 1024 * 1024 // 32)
    chunk = 10 * 1024 * 1024  # huggingface_hub writes 10 MiB at a time
    with FakeHub(stall_after=chunk + 4096) as fake:
        fake.add("LiquidAI/Big-GGUF", {"big-Q8_0.gguf": payload})
        env = _env(fake, tmp_path)
        code = "from lfm2q import hub; print(hub.download('LiquidAI/Big-GGUF').path)"
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, preexec_fn=sigint.default_sigint)
        blobs = tmp_path / "hub" / "models--LiquidAI--Big-GGUF" / "blobs"
        deadline = time.time() + 60
        while not any(p.name.endswith(hub.PART_SUFFIX) and p.stat().st_size >= chunk for p in blobs.glob("*")):
            assert time.time() < deadline and child.poll() is None, child.stderr.read() if child.poll() else ""
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=30)
        assert child.returncode != 0
        (part,) = [p for p in blobs.glob("*") if p.name.endswith(hub.PART_SUFFIX)]
        have = part.stat().st_size
        assert have >= chunk and part.read_bytes() == payload[:have]  # kept, and sound
        r = py(code, env)
        assert r.returncode == 0, r.stderr
        cdn = [rng for m, p, rng in fake.requests if p.startswith("/cdn/") and m == "GET"]
    assert Path(r.stdout.strip()).read_bytes() == payload
    assert cdn == [None, f"bytes={have}-"]  # the second process asked only for the rest
    assert not any(p.name.endswith(hub.PART_SUFFIX) for p in blobs.glob("*"))


def test_convert_fetches_only_what_it_reads(tiny_hf_dir, tmp_path):
    files = {p.name: p for p in tiny_hf_dir.iterdir() if p.is_file()}
    files["original/consolidated.pth"] = b"not read by convert"
    with FakeHub() as fake:
        fake.add("LiquidAI/Tiny-HF", files)
        out = tmp_path / "tiny.gguf"
        r = lfm2q_cli(["convert", "LiquidAI/Tiny-HF", "-o", str(out), "-t", "q8_0"], _env(fake, tmp_path / "home"))
        assert r.returncode == 0, r.stderr
        fetched = {p.split("/resolve/")[1].split("/", 1)[1] for m, p, _ in fake.requests if m == "HEAD" and "/resolve/" in p}
    assert "original/consolidated.pth" not in fetched and {"config.json", "model.safetensors"} <= fetched
    m = lfm2q.load(out)
    assert m.config.n_layer == 6
