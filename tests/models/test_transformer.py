"""The causal Transformer: causality, the sliding key/value cache, and the shared interface."""

import io

import pytest
import torch

from charrnn.data.vocab import CharVocab
from charrnn.errors import CharRNNError
from charrnn.generation.loading import load_model
from charrnn.generation.sampling import sample_text, score_text
from charrnn.models.registry import CharTransformer, build_model
from charrnn.training.run import train


def tiny(context_length: int = 8, num_layers: int = 2, seed: int = 0) -> CharTransformer:
    torch.manual_seed(seed)
    return CharTransformer(11, hidden_size=16, num_layers=num_layers, num_heads=2,
                           context_length=context_length).double().eval()


def test_logits_depend_only_on_earlier_characters():
    model = tiny()
    x = torch.randint(0, 11, (2, 8))
    changed = x.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    first, _ = model(x)
    second, _ = model(changed)
    torch.testing.assert_close(first[:, :5], second[:, :5])
    assert not torch.allclose(first[:, 5:], second[:, 5:])


def test_the_cache_continues_a_text_exactly():
    """Within the context, halves carried by the cache and single steps give the logits of
    one pass over the whole window."""
    model = tiny()
    x = torch.randint(0, 11, (3, 8))
    whole, _ = model(x)
    first, cache = model(x[:, :3])
    second, cache = model(x[:, 3:], cache)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    step = model.stepper()
    logits, cache = model(x[:, :1])
    for t in range(1, 8):
        logits, cache = step(x[:, t], cache)
        torch.testing.assert_close(logits, whole[:, t])
    assert cache.position == 8 and cache.layers[0][0].shape[2] == 7  # context_length - 1 kept


def test_a_full_window_slides():
    """One block: past the context, each character is predicted from exactly the last
    context_length characters, whether the cache slides one step at a time, a long text is
    read in one call, or each window is run on its own from position 0 (rotary positions are
    relative)."""
    model = tiny(context_length=5, num_layers=1)
    x = torch.randint(0, 11, (2, 30))
    stepped = [model(x[:, :1])[0][:, 0]]
    logits, cache = model(x[:, :1])
    step = model.stepper()
    for t in range(1, 30):
        logits, cache = step(x[:, t], cache)
        stepped.append(logits)
    stepped = torch.stack(stepped, dim=1)
    at_once, _ = model(x)  # 30 characters in one call: masked to the window
    torch.testing.assert_close(at_once, stepped)
    for t in range(4, 30):
        window, _ = model(x[:, t - 4 : t + 1])
        torch.testing.assert_close(window[:, -1], stepped[:, t])


def test_a_step_writes_after_the_cache_instead_of_copying_it():
    """Generation appends each step's keys in place: one new buffer every few steps, not one
    per step, and a cache returned earlier keeps its contents."""
    model = tiny(context_length=5, num_layers=1)
    x = torch.randint(0, 11, (2, 40))
    step = model.stepper()
    with torch.inference_mode():  # as generation runs it
        _, cache = model(x[:, :1])
        buffers, earlier = set(), None
        for t in range(1, 40):
            if t == 20:
                earlier = (cache, cache.layers[0][0].clone())
            _, cache = step(x[:, t], cache)
            buffers.add(cache.layers[0][0].untyped_storage().data_ptr())
    assert len(buffers) <= 10  # a buffer of twice the window every ~5 steps: 8, not 39
    assert torch.equal(earlier[0].layers[0][0], earlier[1])


def test_rotary_angles_keep_their_precision_far_into_a_text():
    from charrnn.models.transformer import KVCache

    model = tiny(num_layers=1).float()
    with torch.no_grad():  # sharp attention, so that the angles matter
        model.blocks[0].attention.qkv.weight.normal_(0, 1)
    x = torch.randint(0, 11, (2, 6))
    at_start, _ = model(x)
    empty = KVCache(10_000_000, tuple((torch.zeros(2, 2, 0, 8), torch.zeros(2, 2, 0, 8))
                                      for _ in model.blocks))
    far, _ = model(x, empty)  # the same text 10 million characters later
    torch.testing.assert_close(far, at_start, rtol=1e-4, atol=1e-4)


def test_input_options_and_parameter_sharing():
    onehot = build_model(11, cell="transformer", hidden_size=16, num_heads=2, input="onehot")
    embedded = build_model(11, cell="transformer", hidden_size=16, num_heads=2,
                           input="embedding", embedding_dim=16)
    assert isinstance(onehot, CharTransformer) and onehot.head.weight is onehot.embedding.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(onehot) == count(embedded)
    # recurrent-only keys of a shared config are ignored, as in a sweep over model.cell
    build_model(11, cell="transformer", hidden_size=16, num_heads=2, kernel="auto")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 30, "num_heads": 4}, "must split into model.num_heads=4 heads"),
        ({"hidden_size": 12, "num_heads": 4}, "of an even width"),
        ({"num_heads": 0}, "model.num_heads must be a positive integer"),
        ({"context_length": 0}, "model.context_length must be a positive integer"),
        ({"embedding_dim": 8}, "leave model.embedding_dim=null"),
        ({"weight_drop": 0.2}, "only the recurrent cells"),
        ({"input": "bytes"}, "unknown model.input"),
    ],
)
def test_bad_transformer_settings(kwargs, message):
    settings = {"cell": "transformer", "hidden_size": 16, "num_heads": 2} | kwargs
    with pytest.raises(CharRNNError, match=message):
        build_model(11, **settings)


TRANSFORMER = ["model.cell=transformer", "model.hidden_size=16", "model.num_layers=2",
               "model.num_heads=2", "model.dropout=0.1"]


def test_transformer_trains_resumes_samples_and_scores(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg(*TRANSFORMER, "trainer.max_epochs=1"))
    assert metrics["test_ppl"] < 40 and metrics["parameters"] > 0
    run = tmp_path / "run"
    metrics = train(tiny_cfg(*TRANSFORMER, "trainer.max_epochs=2", f"ckpt_path={run}"))
    assert metrics["epochs_run"] == 2
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)  # plain containers
    assert ckpt["hyper_parameters"]["model"]["context_length"] == 16  # = data.seq_length
    model, vocab = load_model(run / "checkpoints" / "best.ckpt")
    (text,) = sample_text(model, vocab, "to ", 50, temperature=0.8, top_k=5,
                          generator=torch.Generator().manual_seed(0))
    assert len(text) == 50
    texts = sample_text(model, vocab, "", 40, num_samples=3,
                        generator=torch.Generator().manual_seed(0))
    assert len(texts) == 3 and all(len(t) == 40 for t in texts)
    corpus = (tmp_path / "corpus.txt").read_text(encoding="utf-8")[:400]
    static = score_text(model, vocab, corpus)
    dynamic = score_text(model, vocab, corpus, chunk=50, dynamic_lr=1e-3)
    assert static["characters_scored"] == dynamic["characters_scored"] == 399
    assert 1 < static["ppl"] < 40 and dynamic["ppl"] != static["ppl"]


def test_carry_state_needs_a_recurrent_cell(tiny_cfg):
    with pytest.raises(CharRNNError, match="module.carry_state=true .* has none"):
        train(tiny_cfg(*TRANSFORMER, "module.carry_state=true"))


def test_generate_entry_point_with_a_transformer(tiny_cfg, tmp_path):
    from generate import generate
    from tests.conftest import compose_train

    train(tiny_cfg(*TRANSFORMER, "trainer.max_epochs=1"))
    cfg = compose_train([f"ckpt_path={tmp_path / 'run'}", "length=30", "num_samples=2",
                         "temperature=0.5", "seed=3"], config_name="generate")
    first = generate(cfg, stream=io.StringIO())
    assert first == generate(cfg, stream=io.StringIO()) and len(first) == 2
    assert CharVocab.from_text("".join(first))  # decodes to text of the vocabulary
