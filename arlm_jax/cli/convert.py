"""``arlm convert``: Hugging Face model folders to arlm run folders and back.

    arlm convert --from-hf DIR --out RUN_DIR [--tokenizer SPEC]   # GPT-2 / LLaMA safetensors -> a run
    arlm convert --to-hf RUN_DIR --out DIR [--step N]             # a Transformer run -> HF folder

A converted run is a run folder with one checkpoint (step 0, no optimizer state) that
``arlm eval``, ``arlm generate`` and ``arlm train --init-from RUN_DIR`` read. Its tokenizer: the
``--tokenizer`` given; else, for GPT-2's 50,257-token vocabulary, tiktoken's ``gpt2`` when it
loads (cached, or with network access); else the folder's byte-level BPE ``tokenizer.json``,
converted to a tiktoken file inside the run folder (convert/hf/tokenizer.py), with the HF
tokenizer files kept beside it in ``hf_tokenizer/``. ``--to-hf`` of a run whose tokenizer is such
a file (a converted run, or one fine-tuned from it) copies those files into the HF folder too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jsonargparse

from arlm_jax.cli.options import Source, new_parser
from arlm_jax.errors import ConfigError
from arlm_jax.files import require_new_folder

NAME = "convert"
HELP = "convert Hugging Face GPT-2 / LLaMA folders to arlm runs and back"
CONFIG_OPTIONS = False
TOKENIZER_FILE = "tokenizer.tiktoken"
HF_TOKENIZER = "hf_tokenizer"  # the HF folder's own tokenizer files, kept beside TOKENIZER_FILE
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def add_parser(subcommands, source: Source) -> jsonargparse.ArgumentParser:
    p = new_parser(description="Convert a Hugging Face model folder (config.json + safetensors) into an "
                               "arlm run folder, or a Transformer run back into a Hugging Face folder.")
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-hf", type=str, metavar="DIR", help="a Hugging Face GPT-2 or LLaMA model folder")
    way.add_argument("--to-hf", type=str, metavar="RUN_DIR", help="an arlm run folder of a Transformer")
    p.add_argument("--out", type=str, required=True, help="the folder to write (new or empty)")
    p.add_argument("--tokenizer", type=str, default=None,
                   help="--from-hf: data.tokenizer of the run (null: gpt2 or the folder's tokenizer.json)")
    p.add_argument("--step", type=int, default=None, help="--to-hf: checkpoint step (null: the newest)")
    subcommands.add_subcommand(NAME, p, help=HELP)
    return p


def run(args: jsonargparse.Namespace, source: Source) -> int:
    return _from_hf(args) if args.from_hf else _to_hf(args)


def _tokenizer(folder: Path, out: Path, given: str | None):
    """(data.tokenizer spec, Encoding, whether the Encoding still has to be written to the spec's
    path) of a converted run, by the rule in the module docstring."""
    from arlm_jax.convert.hf.tokenizer import tokenizer_from_hf
    from arlm_jax.data.tokenizer import NAMED, load_tokenizer

    if given:
        return given, load_tokenizer(given), False
    enc = tokenizer_from_hf(folder)
    if enc.name in NAMED:  # tiktoken's own gpt2
        return enc.name, enc, False
    return str(out.resolve() / TOKENIZER_FILE), enc, True


def _from_hf(args: jsonargparse.Namespace) -> int:
    import jax

    from arlm_jax.convert.hf import from_hf
    from arlm_jax.data.tokenizer import eot_id, save_tiktoken
    from arlm_jax.train.run_dir import write_model_run

    folder, out = Path(args.from_hf), require_new_folder(args.out, "--out")  # before the work
    params, cfg = from_hf(folder)
    spec, enc, write = _tokenizer(folder, out, args.tokenizer)
    if enc.n_vocab > cfg.vocab_size:
        raise ConfigError(f"convert: the tokenizer has {enc.n_vocab} ids but the model's vocab_size is "
                          f"{cfg.vocab_size}; give a --tokenizer that fits")
    eot_id(enc)  # a one-line error now, rather than at the first eval or fine-tune
    run = write_model_run(out, params, cfg, spec, enc, f"hf:{folder.resolve()}")
    if write:
        save_tiktoken(enc, spec)
        (out / HF_TOKENIZER).mkdir()
        for name in HF_TOKENIZER_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, out / HF_TOKENIZER / name)
    n = sum(int(a.size) for a in jax.tree.leaves(params))
    print(f"converted {folder} ({n:,} parameters, {run.model.n_layers} layers, d_model {run.model.d_model}, "
          f"tokenizer {spec}) into {out}: arlm eval {out}, arlm generate --checkpoint {out}, "
          f"arlm train --init-from {out}")
    return 0


def _special_ids(enc, vocab_size: int, model_type: str) -> dict:
    """config.json's ``eos_token_id`` (the document end) and ``bos_token_id`` (LLaMA-3's
    ``<|begin_of_text|>`` or SentencePiece's ``<s>``; GPT-2 starts with its end token)."""
    from arlm_jax.data.tokenizer import eot_id

    specials = enc._special_tokens
    out = {"eos_token_id": eot_id(enc)}
    bos = next((specials[n] for n in ("<|begin_of_text|>", "<s>") if n in specials), None)
    if bos is None and model_type == "gpt2":
        bos = out["eos_token_id"]
    if bos is not None:
        out["bos_token_id"] = bos
    return {k: v for k, v in out.items() if v < vocab_size}


def _to_hf(args: jsonargparse.Namespace) -> int:
    from arlm_jax.convert.hf import to_hf
    from arlm_jax.convert.hf.api import export_arch
    from arlm_jax.data.tokenizer import load_tokenizer
    from arlm_jax.train.run_dir import load_run

    out = require_new_folder(args.out, "--out")  # before the work
    run, params, meta = load_run(args.to_hf, args.step)
    arch = export_arch(run.model)
    try:
        extra = _special_ids(load_tokenizer(run.data.tokenizer), run.model.vocab_size, arch.model_type)
    except ConfigError:
        extra = {}  # a tokenizer that does not load here: the ids are left unset
    files = to_hf(params, run.model, out, extra_config=extra)
    # a tokenizer converted from HF files (by --from-hf, maybe several fine-tunes ago): its originals
    originals = Path(run.data.tokenizer).parent / HF_TOKENIZER
    if Path(run.data.tokenizer).name == TOKENIZER_FILE and originals.is_dir():
        for src in sorted(originals.iterdir()):
            shutil.copyfile(src, out / src.name)
            files.append(src.name)
    print(f"wrote step {meta['step']} of {args.to_hf} as {arch.architecture} to {out} ({', '.join(files)}); "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it")
    return 0
