"""generate over an NHACache: left-padded batches, greedy/beam/sampling, cache handed back, constant NHA state."""
import pytest
import torch

from nha.models import NHACache, NHAStateLayer

PROMPTS = [[5, 17, 3, 99, 42, 7, 8, 120, 33, 2, 61], [9, 4], [250, 1, 77, 13, 6, 200]]


def left_pad(prompts, pad=0):
    T = max(map(len, prompts))
    ids = torch.tensor([[pad] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("name", ["nha-h", "gsa-h", "swa", "transformer"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(name, make_model):
    model = make_model(name)
    ids, mask = left_pad(PROMPTS)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert batch[row, ids.shape[1]:].tolist() == alone[0, len(prompt):].tolist()


def test_left_padded_cached_decoding_matches_full_forward(model):
    ids, mask = left_pad(PROMPTS)
    extra = torch.randint(0, 256, (3, 6))
    full_ids, full_mask = torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1)
    full = model(full_ids, attention_mask=full_mask, use_cache=False).logits
    out = model(ids, attention_mask=mask, use_cache=True)
    steps = [out.logits]
    for t in range(extra.shape[1]):
        out = model(extra[:, t:t + 1], attention_mask=full_mask[:, :ids.shape[1] + t + 1],
                    past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits)
    real = full_mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=1e-5, rtol=1e-5)


def test_beam_search_and_sampling_run(model):
    ids, mask = left_pad(PROMPTS)
    beams = model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=3, num_return_sequences=2,
                           do_sample=False, pad_token_id=0)
    assert beams.shape == (6, ids.shape[1] + 6)
    torch.manual_seed(1)
    sampled = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_k=20,
                             temperature=0.8, pad_token_id=0)
    assert sampled.shape == (3, ids.shape[1] + 6)


def test_beam_search_with_one_beam_is_greedy(model):
    ids = torch.tensor([PROMPTS[0]])
    greedy = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    beam = model.generate(ids, max_new_tokens=8, num_beams=1, do_sample=False, pad_token_id=0)
    assert torch.equal(greedy, beam)


def test_past_key_values_handed_back_continue_generation(model):
    ids = torch.tensor([PROMPTS[0]])
    whole = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
    first = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    assert isinstance(first.past_key_values, NHACache)
    rest = model.generate(first.sequences, past_key_values=first.past_key_values, max_new_tokens=6,
                          do_sample=False, pad_token_id=0)
    assert torch.equal(rest, whole)


def test_nha_layer_cache_stays_constant_while_full_layers_grow(model):
    ids = torch.tensor([PROMPTS[0]])
    out = model(ids, use_cache=True)
    cache = out.past_key_values
    nha_layers = [i for i, layer in enumerate(cache.layers) if isinstance(layer, NHAStateLayer)]
    full_layers = [i for i, w in enumerate(model.config.layer_windows) if w is None]
    assert nha_layers and full_layers
    nha_bytes, full_len, sizes = cache.layers[nha_layers[0]].state_bytes(), [], []
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(30):
        out = model(token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        sizes.append([cache.layers[i].state_bytes() for i in nha_layers])
        full_len.append(cache.layers[full_layers[0]].keys.shape[-2])
    assert all(s == [nha_bytes] * len(nha_layers) for s in sizes)
    assert full_len == list(range(len(PROMPTS[0]) + 1, len(PROMPTS[0]) + 31))
    assert cache.get_seq_length() == len(PROMPTS[0]) + 30


def test_wrong_cache_type_is_a_clear_error(model):
    from transformers import DynamicCache

    with pytest.raises(ValueError, match="NHACache"):
        model(torch.tensor([[1, 2]]), past_key_values=DynamicCache(), use_cache=True)
