"""Hugging Face checkpoints in and out (convert/hf/), against ``transformers`` itself.

Tiny random GPT-2 and LLaMA models (GQA, tied and untied, attention biases, sharded files) are
built in-process with transformers on torch's CPU backend and saved with ``save_pretrained``;
the slow references are HF's own float32 forward and ``generate``."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import arlm_jax as A
from arlm_jax.convert.hf import from_hf, to_hf
from arlm_jax.errors import ConfigError

torch.set_num_threads(1)  # two xdist workers share two cores
VOCAB = 97

HF_MODELS = {
    "gpt2-tied": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.1),
    "gpt2-untied": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=2, n_inner=48, n_positions=48, tie_word_embeddings=False,
        layer_norm_epsilon=1e-6, initializer_range=0.1),
    "llama-gqa-untied": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0, initializer_range=0.1),
    "llama-mqa-tied-bias": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True, attention_bias=True,
        rms_norm_eps=1e-5, initializer_range=0.1),
}


def hf_class(config):
    return transformers.GPT2LMHeadModel if config.model_type == "gpt2" else transformers.LlamaForCausalLM


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


def tokens(batch=2, length=20, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, length))


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """name -> (folder, the HF model): saved with save_pretrained; the first in 20 KB shards."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for i, (name, make) in enumerate(HF_MODELS.items()):
        torch.manual_seed(i)
        config = make()
        model = hf_class(config)(config).eval()
        with torch.no_grad():  # norms start at 1 and biases at 0: give them values to check too
            for n, p in model.named_parameters():
                if "norm" in n or "ln_" in n or n.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(root / name, max_shard_size="20KB" if i == 0 else "5GB")
        out[name] = (root / name, model)
    return out


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_import_matches_transformers_logits(hf_folders, name):
    folder, model = hf_folders[name]
    params, cfg = from_hf(folder)
    toks = tokens()
    ours = np.asarray(A.forward(params, jnp.asarray(toks, jnp.int32), cfg)[0])
    np.testing.assert_allclose(ours, hf_logits(model, toks), atol=1e-5, rtol=0)
    assert cfg.pos == ("learned" if name.startswith("gpt2") else "rope")


def test_sharded_folder_is_read_through_its_index(hf_folders):
    folder, _ = hf_folders["gpt2-tied"]
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 2


@pytest.mark.parametrize("name", ["gpt2-untied", "llama-gqa-untied"])
def test_greedy_generate_matches_transformers(hf_folders, name):
    folder, model = hf_folders[name]
    params, cfg = from_hf(folder)
    prompt = tokens(1, 7, seed=3)
    with torch.no_grad():
        theirs = model.generate(torch.tensor(prompt), max_new_tokens=16, do_sample=False, eos_token_id=None,
                                pad_token_id=0, attention_mask=torch.ones_like(torch.tensor(prompt)))
    out = A.generate(params, cfg, jnp.asarray(prompt, jnp.int32), jax.random.key(0), max_new_tokens=16,
                     sampler=A.Sampler(temperature=0.0))
    ours = np.asarray(out.tokens)[0, :int(out.lengths[0])]
    np.testing.assert_array_equal(ours, theirs[0, prompt.shape[1]:].numpy())  # ours: the new tokens


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_export_loads_in_transformers_with_equal_logits(hf_folders, name, tmp_path):
    folder, model = hf_folders[name]
    params, cfg = from_hf(folder)
    files = to_hf(params, cfg, tmp_path / "out", max_shard_bytes=30_000)
    assert "model.safetensors.index.json" in files  # sharded at this size
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(model)
    toks = tokens(seed=1)
    np.testing.assert_array_equal(hf_logits(back, toks), hf_logits(model, toks))  # the same weights
    ours = np.asarray(A.forward(params, jnp.asarray(toks, jnp.int32), cfg)[0])
    np.testing.assert_allclose(hf_logits(back, toks), ours, atol=1e-5, rtol=0)


ARLM_MODELS = {
    "gpt2": dict(pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True, dropout=0.1),
    "gpt2-untied-ff": dict(pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=False, d_ff=48),
    "llama-gqa": dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_heads=2,
                      rope_theta=321.0, norm_eps=1e-6),
    "llama-tied-bias": dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=True, tie_embeddings=True),
}


@pytest.mark.parametrize("name", list(ARLM_MODELS))
def test_arlm_to_hf_to_arlm_is_bit_exact(name, tmp_path):
    from conftest import randomise, tiny
    cfg = tiny(**ARLM_MODELS[name])
    params = randomise(A.init(jax.random.key(0), cfg))
    to_hf(params, cfg, tmp_path / "hf")
    back, cfg_back = from_hf(tmp_path / "hf")
    assert cfg_back == cfg
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_files_read_as_float32(hf_folders, tmp_path):
    folder, model = hf_folders["llama-gqa-untied"]
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model.to(torch.float32)
    params, _ = from_hf(tmp_path / "bf16")
    want = model.model.embed_tokens.weight.detach().to(torch.bfloat16).float().numpy()
    assert params["embed"]["tok"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(params["embed"]["tok"]), want)


# ---- bad input: one line naming what is wrong ------------------------------------------------------

def _copy(folder, dest, config=None, tensors=None):
    """``folder`` (one model.safetensors) copied to ``dest`` with config.json fields and tensors changed."""
    from safetensors.numpy import load_file, save_file
    dest.mkdir()
    cfg = json.loads((folder / "config.json").read_text()) | (config or {})
    (dest / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not ...}))
    weights = load_file(folder / "model.safetensors")
    for name, value in (tensors or {}).items():
        if value is None:
            del weights[name]
        else:
            weights[name] = value
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize("case, message", [
    (dict(config={"model_type": "mistral", "architectures": ["MistralForCausalLM"]}), "model_type='mistral'"),
    (dict(config={"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}), "rope_type"),
    (dict(config={"sliding_window": 4096}), "sliding_window=4096"),
    (dict(config={"hidden_act": "gelu"}), "hidden_act='gelu'"),
    (dict(config={"head_dim": 16}), "head_dim=16"),
    (dict(config={"vocab_size": ...}), "no vocab_size"),
    (dict(tensors={"model.layers.1.mlp.up_proj.weight": None}), "'model.layers.1.mlp.up_proj.weight' is missing"),
    (dict(tensors={"model.norm.weight": np.ones(31, np.float32)}), "'model.norm.weight' in"),
    (dict(tensors={"model.layers.0.self_attn.q_proj.bias": np.zeros(32, np.float32)}),
     "'model.layers.0.self_attn.q_proj.bias' and 0 more"),
])
def test_bad_folders_give_one_line_errors(hf_folders, tmp_path, case, message):
    folder, _ = hf_folders["llama-gqa-untied"]
    bad = _copy(folder, tmp_path / "bad", **case)
    with pytest.raises(ConfigError, match="^hf: ") as err:
        from_hf(bad)
    assert message.replace(" and 0 more", "") in str(err.value) and "\n" not in str(err.value)


def test_folder_without_config_or_weights(tmp_path, hf_folders):
    with pytest.raises(ConfigError, match="has no config.json"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text((hf_folders["gpt2-untied"][0] / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="neither model.safetensors nor .*pytorch_model.bin"):
        from_hf(tmp_path)


@pytest.mark.parametrize("cfg, message", [
    (A.get_family("lstm").preset("tiny"), "model.family='lstm' has no Hugging Face architecture"),
    (A.get_family("ngram").preset("tiny"), "model.family='ngram'"),
    (A.ModelConfig.tiny(), None),  # learned/layernorm/gelu: GPT-2
    (dataclasses.replace(A.ModelConfig.tiny(), pos="alibi"), "model.pos='alibi'"),
    (dataclasses.replace(A.ModelConfig.tiny(), n_kv_heads=2), "model.n_kv_heads=2"),
    (dataclasses.replace(A.ModelConfig.tiny(), norm_position="post"), "model.norm_position='post'"),
    (dataclasses.replace(A.ModelConfig.tiny(), parametrization="mup", mup_base_width=16), "parametrization='mup'"),
])
def test_export_refuses_what_hf_cannot_hold(cfg, message, tmp_path):
    from arlm_jax.convert.hf.api import export_arch
    if message is None:
        assert export_arch(cfg).architecture == "GPT2LMHeadModel"
        return
    with pytest.raises(ConfigError, match="^to_hf: ") as err:
        to_hf({}, cfg, tmp_path / "x")
    assert message in str(err.value)
    assert not (tmp_path / "x").exists()
