"""MinHash signatures and clusters: datatrove's own values on worked examples, and the cluster rules."""

import numpy as np
import pytest

from smollm_corpus import clusters, minhash


@pytest.fixture(scope="module")
def signer():
    return minhash.Signer()


# Values computed by datatrove 0.10.1's MinhashDedupSignature with the default MinhashConfig.
QUICK = "The quick brown fox jumps over the lazy dog. The quick brown fox!"
QUICK_BUCKET_0 = [85330943174081874, 663359892825767826, 302227827184868053, 34440879854629237,
                  504608162895668212, 117899488208280896, 922286648869847700, 204404170303891102]
TRICKY = ("I'd say we cannot go, dont u think? Im gonna wed at 10am on 3.5.2024, 1,000,000 km², 10km 5kg 20°C "
          "😀😀 ‘s café naïve İstanbul ﬁne Ⅻ ½ x²")


def test_signatures_are_datatrove_s(signer):
    quick, shouty, tricky, short = signer.sign([QUICK, "THE QUICK brown fox — jumps over the lazy dog; the quick brown fox?",
                                                TRICKY, "Hello there, world!"])
    assert quick[:8].tolist() == QUICK_BUCKET_0 and int(quick[-1]) == 3963570588256049
    assert (shouty == quick).all()  # the same words once simplified
    assert tricky[:3].tolist() == [49675054114226649, 2010999875344495, 99226065768467443]
    assert int(tricky[-1]) == 65423861474544919
    assert (short == minhash.UNSIGNED).all()  # 3 words: no shingle, no signature


def test_text_is_simplified_and_cut_as_datatrove_does(signer):
    assert signer.simplify(QUICK) == "the quick brown fox jumps over the lazy dog the quick brown fox"
    assert signer.simplify(TRICKY) == ("i d say we cannot go dont u think im gonna wed at 0am on 0 0 0 0 km² 0km 0kg 0°c "
                                       "😀😀 ‘s cafe naive istanbul ﬁne ⅻ ½ x²")
    assert " ".join(signer.words(TRICKY)) == ("i d say we can not go do nt u think i m gon na we d at 0am on 0 0 0 0 km² "
                                              "0 km 0 kg 0 ° c 😀 😀 ‘s cafe naive istanbul ﬁne ⅻ ½ x²")
    assert len(signer.shingle_hashes(TRICKY)) == 38
    assert signer.simplify("a\x1fb\tc\u00a0d\u2003e  ") == "a b c d e"


def test_a_batch_signs_each_document_as_alone(signer):
    rng = np.random.default_rng(0)
    words = [f"w{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}" for i in range(500)]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(0, 3000, size=40)]
    together = signer.sign(texts)
    assert all((together[i] == signer.sign([t])[0]).all() for i, t in enumerate(texts))


def test_similarity_estimate(signer):
    base = " ".join(f"word{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(300))
    a, b = signer.sign([base, base.replace("wordaa", "other")])
    assert minhash.similarity(a, a) == 1.0 and 0.9 < minhash.similarity(a, b) < 1.0


def test_components_keep_the_smallest_of_each_cluster():
    # 0-3, 3-5 and 5-1 chain into one cluster (smallest 0); 2-4 is another; 6 has no pair
    a, b = np.array([3, 3, 5, 2]), np.array([0, 5, 1, 4])
    assert clusters.components(a, b, 7).tolist() == [0, 0, 2, 0, 2, 0, 6]
    long_chain = np.arange(1, 10000)
    assert (clusters.components(long_chain, long_chain - 1, 10000) == 0).all()


def test_ids_sort_in_command_then_dataset_order():
    ids = np.concatenate([clusters.doc_id(0, 5, np.array([3, 2**24 - 1])), clusters.doc_id(1, 0, np.array([0]))])
    assert (np.diff(ids.astype(object)) > 0).all()
    assert [x.tolist() for x in clusters.split_id(ids)] == [[0, 0, 1], [5, 5, 0], [3, 2**24 - 1, 0]]


def test_bucket_keys_match_only_equal_buckets():
    rng = np.random.default_rng(1)
    sigs = rng.integers(0, 2**61 - 1, size=(1000, 112), dtype=np.uint64)
    sigs[1, :8] = sigs[0, :8]  # bucket 0 equal
    sigs[2, 8:16] = sigs[0, :8]  # the same values in another bucket: no match
    high, low = clusters.bucket_keys(sigs)
    keys = set()
    for d in range(1000):
        for k in range(14):
            keys.add((int(high[d, k]), int(low[d, k])))
    assert len(keys) == 1000 * 14 - 1
    assert high[1, 0] == high[0, 0] and low[1, 0] == low[0, 0] and high[2, 1] != high[0, 0]


def test_forgetting_what_was_learnt_changes_no_signature(signer, monkeypatch):
    texts = [TRICKY, QUICK, "0km 0mb dont wed ├── 😀😀 " * 5, TRICKY.upper()]
    expected = minhash.Signer().sign(texts)
    monkeypatch.setattr(minhash, "_PIECES_KEPT", 2)  # start again at nearly every text
    forgetful = minhash.Signer()
    assert all((forgetful.sign([t])[0] == expected[i]).all() for i, t in enumerate(texts))
    assert (forgetful.sign(texts) == expected).all()
