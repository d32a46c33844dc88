"""Build the tiny model's dataset from openly licensed text installed by package managers.

    python training/data.py [--out training/out/data]

Sources (licences checked in training/README.md):
    wordnet    Debian `wordnet-base`       /usr/share/wordnet/data.{noun,verb,adj,adv}
    fortunes   Debian `fortunes`           /usr/share/games/fortunes/<category> (a whitelist)
    pydocs     Debian `python3.11-doc`     /usr/share/doc/python3.11/html/_sources/{tutorial,faq,howto}
    chatterbot PyPI `chatterbot-corpus`    chatterbot_corpus/data/english/*.yml (read from the wheel)

Every record is one JSON line, either {"source", "key", "text"} (plain text) or
{"source", "key", "messages"} (a dialogue for the chat template). The split is by a hash of
(source, key), so it does not depend on file order or on the other sources: a WordNet synset's
plain-text gloss and its question/answer dialogue always land on the same side.

Output: train.jsonl, test.jsonl and stats.json in --out. Deterministic: the same installed
packages give byte-identical files.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

TEST_PERCENT = 3  # held-out share, by hash

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
PYDOC_DIR = Path("/usr/share/doc/python3.11/html/_sources")
CHATTERBOT_VERSION = "1.3.3"

# Fortune categories kept: general wit, science, computing and literature. Left out: ascii art,
# the offensive-leaning or dated ones (ethnic, men-women, politics, drugs, law, news, ...),
# humorous fake "definitions" (they would teach wrong meanings) and non-English ones.
FORTUNE_CATEGORIES = [
    "computers", "education", "food", "fortunes", "goedel", "humorists", "kids", "linux",
    "literature", "love", "magic", "medicine", "paradoxum", "people", "pets", "platitudes",
    "riddles", "science", "songs-poems", "sports", "wisdom", "work",
]
PYDOC_DIRS = ["tutorial", "faq", "howto"]

POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def is_test(source: str, key: str) -> bool:
    h = hashlib.sha256(f"{source}\0{key}".encode()).digest()
    return int.from_bytes(h[:4], "little") % 100 < TEST_PERCENT


def _pick(options: list[str], key: str) -> str:
    """A deterministic choice keyed by text (no RNG state to keep in step)."""
    h = hashlib.sha256(key.encode()).digest()
    return options[int.from_bytes(h[:4], "little") % len(options)]


# ---------------------------------------------------------------------------------------------
# WordNet: each synset becomes a "The meaning of ..." paragraph and a question/answer dialogue.

def _wordnet_synsets():
    for pos_file in ["noun", "verb", "adj", "adv"]:
        for line in (WORDNET_DIR / f"data.{pos_file}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            head, gloss = line.split(" | ", 1)
            f = head.split()
            offset, ss_type, w_cnt = f[0], f[2], int(f[3], 16)
            words = [f[4 + 2 * i].replace("_", " ") for i in range(w_cnt)]
            words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]  # adjective markers like (a)
            parts = [p.strip() for p in gloss.strip().split(";") if p.strip()]
            defs = [p for p in parts if not p.startswith('"')]
            examples = [p.strip('"') for p in parts if p.startswith('"')]
            if defs:
                yield f"{ss_type}{offset}", POS_NAMES[ss_type], words, defs, examples


def wordnet_records():
    for key, pos, words, defs, examples in _wordnet_synsets():
        w = words[0]
        definition = "; ".join(defs)
        text = f"The meaning of {w} ({pos}): {definition}."
        if len(words) > 1:
            text += " Also called " + ", ".join(words[1:]) + "."
        if examples:
            text += f' Example: "{examples[0]}".'
        yield {"source": "wordnet", "key": key, "text": text}

        question = _pick([
            f"What does {w} mean?", f"What is the meaning of {w}?", f"Define {w}.",
            f"What does the word {w} mean?", f"Can you explain what {w} means?",
        ], key)
        answer = f"{w[0].upper() + w[1:]} is a {pos} that means {defs[0]}."
        if examples:
            answer += f' For example: "{examples[0]}".'
        yield {"source": "wordnet-chat", "key": key,
               "messages": [{"role": "user", "content": question},
                            {"role": "assistant", "content": answer}]}


# ---------------------------------------------------------------------------------------------
# Fortunes: one record per fortune ("%"-separated).

def fortune_records():
    seen = set()
    for cat in FORTUNE_CATEGORIES:
        path = FORTUNE_DIR / cat
        if not path.is_file():
            continue
        raw = path.read_text(encoding="utf-8", errors="replace")
        for i, entry in enumerate(re.split(r"^%\n", raw, flags=re.M)):
            entry = "\n".join(line.rstrip() for line in entry.strip("\n").splitlines()).strip()
            if len(entry) < 20 or entry in seen:
                continue
            seen.add(entry)
            yield {"source": "fortunes", "key": f"{cat}/{i}", "text": entry}


# ---------------------------------------------------------------------------------------------
# Python documentation: reST sources with the markup stripped, cut into paragraph groups.

_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")


def _clean_rst(text: str) -> str:
    out, skip_indent = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if skip_indent is not None:
            if stripped == "" or indent > skip_indent:
                continue
            skip_indent = None
        if stripped.startswith(".. ") and not stripped.startswith((".. code", ".. doctest")):
            skip_indent = indent  # directives, comments, index entries and their bodies
            continue
        if re.fullmatch(r"([=\-~^*#+\"'`])\1{2,}", stripped):
            continue  # section underlines
        line = _ROLE.sub(r"\1", line)
        line = _LINK.sub(r"\1", line)
        line = line.replace("``", "").replace("::", ":")
        out.append(line.rstrip())
    return "\n".join(out)


def pydoc_records(max_chars: int = 1500):
    for sub in PYDOC_DIRS:
        for path in sorted(glob.glob(str(PYDOC_DIR / sub / "**" / "*.rst.txt"), recursive=True)):
            rel = str(Path(path).relative_to(PYDOC_DIR))
            paras = [p.strip("\n") for p in re.split(r"\n\s*\n", _clean_rst(Path(path).read_text()))]
            paras = [p for p in paras if p.strip()]
            chunk, n = [], 0
            for p in paras + [None]:
                if p is None or (chunk and sum(len(c) for c in chunk) + len(p) > max_chars):
                    if chunk and sum(len(c) for c in chunk) > 200:
                        yield {"source": "pydocs", "key": f"{rel}#{n}", "text": "\n\n".join(chunk)}
                        n += 1
                    chunk = []
                if p is not None:
                    chunk.append(p)


# ---------------------------------------------------------------------------------------------
# chatterbot-corpus: short English dialogues, read from the PyPI wheel (no install needed).

def _chatterbot_wheel(cache: Path) -> Path:
    wheels = sorted(cache.glob(f"chatterbot_corpus-{CHATTERBOT_VERSION}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                        f"chatterbot-corpus=={CHATTERBOT_VERSION}"], check=True)
        wheels = sorted(cache.glob(f"chatterbot_corpus-{CHATTERBOT_VERSION}-*.whl"))
    return wheels[0]


def chatterbot_records(cache: Path):
    import yaml

    with zipfile.ZipFile(_chatterbot_wheel(cache)) as zf:
        names = sorted(n for n in zf.namelist()
                       if n.startswith("chatterbot_corpus/data/english/") and n.endswith(".yml"))
        for name in names:
            doc = yaml.safe_load(zf.read(name).decode("utf-8"))
            topic = Path(name).stem
            for i, conv in enumerate(doc.get("conversations") or []):
                turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
                if len(turns) < 2:
                    continue
                if len(turns) % 2:
                    turns = turns[:-1]  # end on an assistant turn
                messages = [{"role": "user" if j % 2 == 0 else "assistant", "content": t}
                            for j, t in enumerate(turns)]
                yield {"source": "chatterbot", "key": f"{topic}/{i}", "messages": messages}


# ---------------------------------------------------------------------------------------------

def build(out: Path, cache: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    stats: dict = {}
    with open(out / "train.jsonl", "w", encoding="utf-8") as ftr, \
         open(out / "test.jsonl", "w", encoding="utf-8") as fte:
        for gen in (wordnet_records(), fortune_records(), pydoc_records(), chatterbot_records(cache)):
            for rec in gen:
                split = "test" if is_test(rec["source"].split("-")[0], rec["key"]) else "train"
                (fte if split == "test" else ftr).write(json.dumps(rec, ensure_ascii=False) + "\n")
                s = stats.setdefault(rec["source"], {"train": 0, "test": 0, "chars": 0})
                s[split] += 1
                s["chars"] += len(rec.get("text") or json.dumps(rec["messages"], ensure_ascii=False))
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=here / "out" / "data")
    ap.add_argument("--cache", type=Path, default=here / "out" / "cache")
    args = ap.parse_args()
    print(json.dumps(build(args.out, args.cache), indent=2))


if __name__ == "__main__":
    main()
