"""The sorted-segment key store against a plain dictionary."""

import torch

from cpic.util import KeyStore
from cpic.util.keystore import merge_sorted


def test_merge_sorted_either_order():
    gen = torch.Generator().manual_seed(0)
    keys = torch.randperm(10_000, generator=gen)[:3000]
    a, b = torch.sort(keys[:2500]).values, torch.sort(keys[2500:]).values
    for k1, k2 in ((a, b), (b, a)):
        merged, values = merge_sorted(k1, k1.double() * 2, k2, k2.double() * 2)
        assert torch.equal(merged, torch.sort(keys).values)
        assert torch.equal(values, merged.double() * 2)
        step = torch.arange(3)
        _, rows = merge_sorted(k1, k1[:, None] + step, k2, k2[:, None] + step)
        assert torch.equal(rows, merged[:, None] + step)  # values with trailing axes


def test_store_matches_a_dictionary_and_respects_its_budget():
    gen = torch.Generator().manual_seed(1)
    store, reference = KeyStore(torch.float64), {}
    KeyStore.SMALL = 64  # exercise several segments
    try:
        for _ in range(30):
            new = torch.randint(0, 5000, (200,), generator=gen).unique()
            found, _ = store.lookup(new)
            new = new[~found]
            store.insert(new, new.double().sqrt())
            reference.update({int(k): float(k) ** 0.5 for k in new})
            queries = torch.randint(0, 5000, (500,), generator=gen)
            found, values = store.lookup(queries)
            assert found.tolist() == [int(q) in reference for q in queries]
            assert torch.allclose(values[found], queries[found].double().sqrt())
        assert len(store) == len(reference) and len(store._segments) > 1
    finally:
        KeyStore.SMALL = 65536
    small = KeyStore(torch.float32, max_bytes=4000)
    for start in range(0, 2000, 100):
        small.insert(torch.arange(start, start + 100), torch.ones(100))
        assert small.nbytes <= 4000
    assert small.lookup(torch.tensor([1999]))[0].item()  # the newest entries survive
