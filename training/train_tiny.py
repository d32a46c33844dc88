"""Train lfm2q-tiny: a few-million-parameter LFM2 (transformers' Lfm2ForCausalLM) on one CPU thread.

    python training/data.py                       # build training/out/data/{train,test}.jsonl
    python training/train_tiny.py --smoke         # ~1 minute end-to-end check -> training/out/smoke
    python training/train_tiny.py                 # the real run -> training/out/lfm2q-tiny

Steps, in order: train a byte-level BPE on the training split, laid out like LFM2's tokenizer
(special tokens at LFM2's ids 0-13, the Llama-3 split regex + ByteLevel, BOS added by a
TemplateProcessing, LFM2's chat template); build a seeded token stream that mixes plain text with
dialogues rendered by that chat template; train; measure loss and perplexity on held-out and
training documents; write an HF checkpoint folder, metrics.json and a few greedy samples.

Everything is seeded and single-threaded, so a rerun gives the same numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
CHAT_TEMPLATE = (HERE / "chat_template.jinja").read_text(encoding="utf-8")

# LFM2's special tokens, in id order (ids 0-13), as in its tokenizer.json.
SPECIAL_TOKENS = [
    "<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|fim_pre|>", "<|fim_mid|>", "<|fim_suf|>",
    "<|im_start|>", "<|im_end|>", "<|tool_list_start|>", "<|tool_list_end|>",
    "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_response_start|>", "<|tool_response_end|>",
]
PAD_ID, BOS_ID, ENDOFTEXT_ID, IM_END_ID = 0, 1, 2, 7

# Exactly the Split regex of LFM2's tokenizer.json (the Llama-3 pre-tokenizer).
LFM2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass
class Recipe:
    seed: int = 1234
    tokenizer_size: int = 4000        # BPE entries; the embedding has vocab_size rows (rounded to 64)
    # model: LFM2's block types and layer pattern style, scaled down
    hidden_size: int = 128            # D
    num_hidden_layers: int = 8
    attn_layers: tuple = (2, 5, 7)    # the rest are short-conv blocks (LFM2-350M: 2, 5, 8, 10, 12, 14)
    num_attention_heads: int = 4      # H, head_dim HD = D / H = 32
    num_key_value_heads: int = 2      # KVH (GQA)
    intermediate_size: int = 512      # FF, used as is (block_auto_adjust_ff_dim off)
    conv_L_cache: int = 3             # L
    max_position_embeddings: int = 4096
    # optimisation
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 1100
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # data mixture, by share of training tokens
    mix: dict = field(default_factory=lambda: {
        "wordnet": 0.33, "wordnet-chat": 0.22, "chatterbot": 0.12, "fortunes": 0.20, "pydocs": 0.13,
    })
    eval_tokens_per_source: int = 16384
    chatterbot_system_share: float = 0.3  # share of chatterbot dialogues given the system prompt


# ---------------------------------------------------------------------------------------------
# Data


def load_jsonl(path: Path) -> dict[str, list[dict]]:
    by_source: dict[str, list[dict]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            by_source.setdefault(rec["source"], []).append(rec)
    return by_source


def with_system_prompt(rec: dict, share: float) -> list[dict]:
    """Some chatterbot dialogues get LFM2's usual system prompt, chosen by key (deterministic)."""
    messages = rec["messages"]
    if rec["source"] == "chatterbot" and (hash_fraction(rec["key"]) < share):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}] + messages
    return messages


def hash_fraction(key: str) -> float:
    import hashlib
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") / 2**32


def render_chat(messages: list[dict]) -> str:
    """LFM2's chat template, rendered the way transformers does (the template writes BOS itself)."""
    from transformers.utils.chat_template_utils import render_jinja_template
    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=CHAT_TEMPLATE,
        bos_token=SPECIAL_TOKENS[BOS_ID], eos_token=SPECIAL_TOKENS[IM_END_ID],
        add_generation_prompt=False,
    )
    return rendered[0]


def encode_record(tok, rec: dict, recipe: Recipe) -> list[int]:
    """Plain text: BOS text <|endoftext|>. Dialogue: the rendered template, encoded without adding
    another BOS (the template starts with it), ending in <|im_end|>\\n."""
    if "text" in rec:
        return tok.encode(rec["text"]).ids + [ENDOFTEXT_ID]
    text = render_chat(with_system_prompt(rec, recipe.chatterbot_system_share))
    return tok.encode(text, add_special_tokens=False).ids


def training_stream(tok, train: dict[str, list[dict]], recipe: Recipe, n_tokens: int) -> list[int]:
    """A seeded token stream with the recipe's source mixture: each source is walked in its own
    shuffled order (reshuffled when it runs out); the next source is drawn by weight."""
    rng = random.Random(recipe.seed)
    sources = sorted(recipe.mix)
    weights = [recipe.mix[s] for s in sources]
    orders = {s: [] for s in sources}
    counts = {s: 0 for s in sources}      # tokens drawn per source, to steer towards the mixture
    stream: list[int] = []
    while len(stream) < n_tokens:
        # deficit-weighted choice keeps the realised mixture close to the target
        total = max(1, len(stream))
        deficits = [max(1e-6, w - counts[s] / total) for s, w in zip(sources, weights)]
        s = rng.choices(sources, weights=deficits)[0]
        if not orders[s]:
            orders[s] = list(range(len(train[s])))
            rng.shuffle(orders[s])
        ids = encode_record(tok, train[s][orders[s].pop()], recipe)
        counts[s] += len(ids)
        stream.extend(ids)
    print("mixture:", {s: round(counts[s] / len(stream), 3) for s in sources}, flush=True)
    return stream[:n_tokens]


# ---------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(train: dict[str, list[dict]], recipe: Recipe):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LFM2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    specials = [AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
                for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.tokenizer_size, min_frequency=2, show_progress=False,
        special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )

    def texts():
        for s in sorted(train):
            for rec in train[s]:
                if "text" in rec:
                    yield rec["text"]
                else:
                    for m in rec["messages"]:  # role names as the template writes them
                        yield m["role"] + "\n" + m["content"]

    tok.train_from_iterator(texts(), trainer=trainer)
    bos = SPECIAL_TOKENS[BOS_ID]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:0 $B:0",
                                      special_tokens=[(bos, BOS_ID)]),
    ])
    tok.decoder = decoders.Sequence([decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)])
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, i)
    return tok


def save_tokenizer(tok, out: Path) -> None:
    """tokenizer.json, tokenizer_config.json (LFM2's chat template inline) and special_tokens_map.json,
    with the same keys as LFM2's own files."""
    tok.save(str(out / "tokenizer.json"))
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)}
    config = {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added,
        "bos_token": SPECIAL_TOKENS[BOS_ID], "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True, "eos_token": SPECIAL_TOKENS[IM_END_ID],
        "extra_special_tokens": {}, "legacy": False,
        "model_max_length": 1000000000000000019884624838656, "pad_token": SPECIAL_TOKENS[PAD_ID],
        "spaces_between_special_tokens": False, "tokenizer_class": "PreTrainedTokenizerFast",
        "use_default_system_prompt": False, "use_fast": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    def special(t: str) -> dict:
        return {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    stm = {"bos_token": special(SPECIAL_TOKENS[BOS_ID]), "eos_token": special(SPECIAL_TOKENS[IM_END_ID]),
           "pad_token": special(SPECIAL_TOKENS[PAD_ID])}
    (out / "special_tokens_map.json").write_text(json.dumps(stm, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Model, training, evaluation


def make_model(recipe: Recipe, vocab_size: int):
    from transformers import Lfm2Config, Lfm2ForCausalLM
    cfg = Lfm2Config(
        vocab_size=vocab_size, hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers, num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads, max_position_embeddings=recipe.max_position_embeddings,
        conv_L_cache=recipe.conv_L_cache, block_auto_adjust_ff_dim=False, tie_word_embeddings=True,
        layer_types=["full_attention" if i in recipe.attn_layers else "conv"
                     for i in range(recipe.num_hidden_layers)],
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=IM_END_ID,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    cfg.architectures = ["Lfm2ForCausalLM"]
    return Lfm2ForCausalLM(cfg)


def lr_at(step: int, r: Recipe) -> float:
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    p = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return r.lr * (r.min_lr_ratio + (1 - r.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def evaluate(model, tok, docs: dict[str, list[dict]], recipe: Recipe) -> dict:
    """Token-level NLL over the first documents of each source (in file order) up to
    eval_tokens_per_source tokens, packed into seq_len rows. Every token after the first of a row
    is predicted; the first token of each row is context only."""
    import torch
    res, tot_nll, tot_n = {}, 0.0, 0
    model.eval()
    with torch.no_grad():
        for s in sorted(recipe.mix):
            ids: list[int] = []
            for rec in docs.get(s, []):
                ids.extend(encode_record(tok, rec, recipe))
                if len(ids) >= recipe.eval_tokens_per_source:
                    break
            ids = ids[:recipe.eval_tokens_per_source]
            nll, n = 0.0, 0
            for i in range(0, len(ids) - 1, recipe.seq_len * 4):
                chunk = ids[i:i + recipe.seq_len * 4]
                rows = [chunk[j:j + recipe.seq_len] for j in range(0, len(chunk), recipe.seq_len)]
                rows = [r for r in rows if len(r) > 1]
                for r in rows:
                    x = torch.tensor([r])
                    logits = model(input_ids=x).logits[0, :-1].float()
                    nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
                    n += len(r) - 1
            res[s] = {"loss": nll / n, "ppl": math.exp(nll / n), "tokens": n}
            tot_nll += nll
            tot_n += n
    model.train()
    res["all"] = {"loss": tot_nll / tot_n, "ppl": math.exp(tot_nll / tot_n), "tokens": tot_n}
    return res


def greedy_samples(out: Path, n_new: int = 60) -> list[dict]:
    """Greedy continuations with transformers from the saved folder (what a user would load)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    prompts = [
        ("text", "The meaning of"),
        ("text", "The meaning of house"),
        ("chat", [{"role": "user", "content": "What does river mean?"}]),
        ("chat", [{"role": "user", "content": "Hello, how are you?"}]),
        ("chat", [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "What is Python?"}]),
    ]
    samples = []
    for kind, p in prompts:
        if kind == "text":
            ids = tok(p, return_tensors="pt").input_ids
        else:
            text = tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=n_new, do_sample=False, eos_token_id=[IM_END_ID, ENDOFTEXT_ID],
                                 pad_token_id=PAD_ID)
        completion = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=False)
        samples.append({"kind": kind, "prompt": p, "completion": completion})
        print(f"[{kind}] {p!r} -> {completion!r}", flush=True)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE / "out" / "data")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="20 steps, small eval, out dir training/out/smoke")
    args = ap.parse_args()

    import numpy as np
    import torch
    torch.set_num_threads(1)

    recipe = Recipe()
    if args.smoke:
        recipe.steps, recipe.warmup_steps, recipe.eval_tokens_per_source = 20, 5, 1024
    if args.steps:
        recipe.steps = args.steps
    out = args.out or HERE / "out" / ("smoke" if args.smoke else "lfm2q-tiny")
    out.mkdir(parents=True, exist_ok=True)
    random.seed(recipe.seed)
    np.random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    t0 = time.time()

    train = load_jsonl(args.data / "train.jsonl")
    test = load_jsonl(args.data / "test.jsonl")
    tok = train_tokenizer(train, recipe)
    save_tokenizer(tok, out)
    n_tok = tok.get_vocab_size()
    vocab_size = -(-n_tok // 64) * 64  # ids n_tok..vocab_size-1 stay unused, like LFM2's 64400..65535
    print(f"tokenizer: {n_tok} entries, vocab_size {vocab_size} ({time.time() - t0:.0f}s)", flush=True)

    n_train_tokens = recipe.steps * recipe.batch_size * recipe.seq_len
    stream = torch.tensor(training_stream(tok, train, recipe, n_train_tokens), dtype=torch.long)
    batches = stream.view(recipe.steps, recipe.batch_size, recipe.seq_len)
    print(f"stream: {n_train_tokens} tokens ({time.time() - t0:.0f}s)", flush=True)

    model = make_model(recipe, vocab_size)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=recipe.lr, betas=(0.9, 0.95), eps=1e-8)

    t_train = time.time()
    losses = []
    log = open(out / "train_log.tsv", "w")
    log.write("step\tloss\tlr\telapsed_s\n")
    for step in range(recipe.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, recipe)
        x = batches[step]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == recipe.steps - 1:
            el = time.time() - t_train
            log.write(f"{step}\t{losses[-1]:.4f}\t{lr_at(step, recipe):.2e}\t{el:.1f}\n")
            log.flush()
        if step % 25 == 0 or step == recipe.steps - 1:
            el = time.time() - t_train
            avg = sum(losses[-25:]) / len(losses[-25:])
            print(f"step {step:5d}  loss {avg:.3f}  lr {lr_at(step, recipe):.2e}  "
                  f"{(step + 1) * x.numel() / el:.0f} tok/s  {el / 60:.1f} min", flush=True)
        if step % 200 == 199:
            model.save_pretrained(out)  # a usable checkpoint even if the run is cut short
    train_wall = time.time() - t_train

    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    ev_test = evaluate(model, tok, test, recipe)
    ev_train = evaluate(model, tok, train, recipe)
    print("held-out:", json.dumps(ev_test), flush=True)
    print("train:   ", json.dumps(ev_train), flush=True)
    samples = greedy_samples(out)
    metrics = {
        "parameters": n_params, "tokenizer_entries": n_tok, "vocab_size": vocab_size,
        "train_tokens": n_train_tokens, "train_wall_s": round(train_wall, 1),
        "total_wall_s": round(time.time() - t0, 1),
        "final_train_loss_last50": sum(losses[-50:]) / len(losses[-50:]),
        "eval_heldout": ev_test, "eval_train": ev_train,
        "recipe": asdict(recipe), "samples": samples,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "tokenizers": __import__("tokenizers").__version__},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    print(f"done in {time.time() - t0:.0f}s -> {out}", flush=True)


if __name__ == "__main__":
    main()
