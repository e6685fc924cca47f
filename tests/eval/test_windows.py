import pytest
import torch

from nha.eval.windows import (apply_windows, calibration_loss, current_layout, measured_state_bytes, search_windows,
                              state_bytes)
from nha.models import NHAForCausalLM

CANDIDATES = (0, 4, 16, None)


@pytest.fixture
def calib():
    return torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("layout", [(8, None, 8, None), (0, 16, None, 4)])
def test_state_bytes_equal_what_the_cache_holds(tiny, layout):
    apply_windows(tiny, layout)
    assert state_bytes(tiny, layout, 40) == measured_state_bytes(tiny, 40)


def test_search_respects_byte_budget(tiny, calib):
    start_bytes = state_bytes(tiny, current_layout(tiny), 1024)
    budget = start_bytes // 3
    res = search_windows(tiny, calib, max_state_bytes=budget, candidates=CANDIDATES, context_len=1024)
    assert not res.start.fits and res.best.fits and res.best.state_bytes <= budget
    assert current_layout(tiny) == res.best.layout                  # applied
    assert measured_state_bytes(tiny, 1024) <= budget               # and the real cache agrees
    assert calibration_loss(tiny, calib) == pytest.approx(res.best.loss)


@pytest.mark.parametrize("beam", [1, 2])
def test_search_never_ends_worse_than_a_fitting_start(tiny, calib, beam):
    res = search_windows(tiny, calib, max_full_layers=2, candidates=CANDIDATES, beam_width=beam, max_evals=30)
    assert res.start.fits and res.best.loss <= res.start.loss
    assert res.best.full_layers <= 2
    res1 = search_windows(tiny, calib, max_full_layers=0, candidates=CANDIDATES, beam_width=beam, max_evals=30)
    assert res1.best.full_layers == 0 and None not in current_layout(tiny)


def test_chosen_windows_survive_save_and_load(tiny, tmp_path):
    apply_windows(tiny, (None, 16, 0, 4))
    tiny.save_pretrained(tmp_path)
    again = NHAForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 256, (1, 40))
    assert current_layout(again) == (None, 16, 0, 4)
    torch.testing.assert_close(again(ids).logits, tiny(ids).logits)


def test_bad_budgets_and_layouts(tiny, calib):
    with pytest.raises(ValueError, match="give a budget"):
        search_windows(tiny, calib)
    with pytest.raises(ValueError, match="below the smallest layout"):
        search_windows(tiny, calib, max_state_bytes=100, candidates=CANDIDATES)
    with pytest.raises(ValueError, match="one window per layer"):
        apply_windows(tiny, (8, 8))
    with pytest.raises(ValueError, match="no slots"):
        apply_windows(tiny, (8, 0, 8, None))  # layer 1 of nha-h tiny was built without slots
