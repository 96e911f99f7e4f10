import pytest
import torch
import torch.nn.functional as F

from hdlm import masks
from hdlm.errors import ConfigError
from hdlm.schedules import block, flat, from_table, quenched_ar, slide

SCHEDULES = [quenched_ar(6), flat(5, 3), block(7, 3, 2), slide(9, 4, 3), slide(8, 3, 2)]


def assert_every_row_attends(mask):
    assert mask.dtype == torch.bool
    assert mask.any(dim=-1).all(), "a fully masked row makes SDPA return NaN"


def test_small_cases():
    assert masks.causal(3).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert masks.full(2).int().tolist() == [[1, 1], [1, 1]]
    assert masks.block_causal(4, 2).int().tolist() == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 1, 1, 1],
    ]
    # keys:      noisy 0..3   clean 0..3
    assert masks.two_copy_block_diffusion(4, 2).int().tolist() == [
        [1, 1, 0, 0, 0, 0, 0, 0],  # noisy block 0: itself
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],  # noisy block 1: itself and clean block 0
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],  # clean block 0: clean block 0
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],  # clean block 1: clean blocks 0 and 1
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]
    assert masks.positions_for_two_copy(3).tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("length, width", [(1, 1), (5, 1), (5, 2), (7, 3), (8, 4), (3, 5)])
def test_structured_masks(length, width):
    for mask in (masks.causal(length), masks.full(length), masks.block_causal(length, width)):
        assert mask.shape == (length, length)
        assert_every_row_attends(mask)
    two_copy = masks.two_copy_block_diffusion(length, width)
    assert two_copy.shape == (2 * length, 2 * length)
    assert_every_row_attends(two_copy)
    assert torch.equal(two_copy[length:, length:], masks.block_causal(length, width))
    assert not two_copy[length:, :length].any(), "a clean token sees a noisy one"
    assert torch.equal(masks.block_causal(length, 1), masks.causal(length))


def test_bad_width():
    with pytest.raises(ConfigError, match="width must be a positive integer"):
        masks.block_causal(4, 0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda schedule: schedule.name)
def test_from_schedule_rows_attend(schedule):
    for s in range(1, schedule.num_steps + 1):
        assert_every_row_attends(masks.from_schedule(schedule, s))


def test_quenched_ar_is_causal():
    schedule, causal = quenched_ar(6), masks.causal(6)
    for s in range(1, 7):
        mask = masks.from_schedule(schedule, s)
        assert torch.equal(mask[s - 1], causal[s - 1])  # the active position
        assert torch.equal(mask[: s - 1], causal[: s - 1])  # the settled ones


def test_flat_is_full():
    schedule = flat(5, 3)
    for s in range(1, 4):
        assert torch.equal(masks.from_schedule(schedule, s), masks.full(5))


@pytest.mark.parametrize("length, width, steps", [(8, 2, 2), (7, 3, 2), (6, 6, 3)])
def test_block_schedule_matches_two_copy(length, width, steps):
    """Training on one step sees what the two-copy layout shows the block in flight."""
    schedule = block(length, width, steps)
    two_copy = masks.two_copy_block_diffusion(length, width)
    noisy_rows = two_copy[:length, :length] | two_copy[:length, length:]  # blocks are disjoint
    for s in range(1, schedule.num_steps + 1):
        mask = masks.from_schedule(schedule, s)
        active, settled = schedule.active(s), schedule.settled(s - 1)
        assert torch.equal(mask[active], noisy_rows[active])
        assert torch.equal(mask[settled], two_copy[length:, length:][settled])


def attention_stack(x, attend, weights):
    """A toy transformer without MLPs: residual single-head attention layers over x [n, d]."""
    for wq, wk, wv in weights:
        x = x + F.scaled_dot_product_attention(x @ wq, x @ wk, x @ wv, attn_mask=attend)
    return x


def cached_active_outputs(schedule, s, x, weights):
    """Active outputs at step s, computed the way a KV-cached sampler does: every earlier step's
    newly settled positions are run once, attending to the cache and to each other, and their
    keys/values committed; then the active positions attend to the cache and to each other."""
    cache = [([], []) for _ in weights]

    def run(index, commit):
        h = x[index]
        for (wq, wk, wv), (keys, values) in zip(weights, cache, strict=True):
            k, v = h @ wk, h @ wv
            attn = F.scaled_dot_product_attention(
                h @ wq, torch.cat([*keys, k]), torch.cat([*values, v])
            )
            if commit:
                keys.append(k)
                values.append(v)
            h = h + attn
        return h

    for t in range(1, s):
        run(schedule.newly_settled(t), commit=True)
    return run(schedule.active(s), commit=False)


@pytest.mark.parametrize(
    "schedule",
    [quenched_ar(6), block(7, 3, 2), slide(9, 4, 3), slide(8, 3, 2)],
    ids=lambda schedule: schedule.name,
)
def test_from_schedule_equals_kv_cached_inference(schedule):
    torch.manual_seed(0)
    d = 8
    x = torch.randn(schedule.length, d, dtype=torch.float64)
    weights = [torch.randn(3, d, d, dtype=torch.float64) / d**0.5 for _ in range(3)]
    for s in range(1, schedule.num_steps + 1):
        trained = attention_stack(x, masks.from_schedule(schedule, s), weights)
        cached = cached_active_outputs(schedule, s, x, weights)
        torch.testing.assert_close(trained[schedule.active(s)], cached)


HELD = from_table(torch.tensor([[1, 1, 1, 1], [0.5, 1, 1, 1], [0.5, 0.3, 0, 1], [0, 0, 0, 0.0]]))


@pytest.mark.parametrize("schedule", [*SCHEDULES, HELD], ids=lambda schedule: schedule.name)
def test_batched_schedule_masks_follow_the_state_definitions(schedule):
    steps = torch.arange(1, schedule.num_steps + 1)
    batched = masks.from_schedule(schedule, steps)
    for s, mask in zip(steps.tolist(), batched, strict=True):
        settled, active = schedule.settled(s - 1), schedule.active(s)
        untouched = schedule.untouched(s)
        order = schedule.settle_step
        for q in range(schedule.length):
            if settled[q]:
                expected = settled & (order <= order[q])
            elif active[q]:
                expected = ~untouched
            else:
                expected = torch.arange(schedule.length) == q
            assert torch.equal(mask[q], expected), (s, q)
