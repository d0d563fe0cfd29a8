"""LocalAgreement on hand-made hypothesis sequences."""

from stt_worker.core.streaming import LocalAgreement, Partial, partial_text


def test_words_become_stable_when_two_hypotheses_agree():
    agreement = LocalAgreement()
    assert agreement.update("And so my") == Partial("And so my", 0)
    assert agreement.update("And so my fellow") == Partial("And so my fellow", len("And so my"))
    out = agreement.update("and so, my fellow Americans")
    # Case and punctuation do not break agreement; stable words keep their first spelling.
    assert out == Partial("And so my fellow Americans", len("And so my fellow"))


def test_a_revision_never_touches_stable_words():
    agreement = LocalAgreement()
    agreement.update("Stuff it into")
    agreement.update("Stuff it into you")  # "Stuff it into" is now stable
    out = agreement.update("Stuffered into you his belly")
    # The stable words stay; the new words are aligned after them, none lost or doubled.
    assert out == Partial("Stuff it into you his belly", len("Stuff it into you"))


def test_disagreement_commits_nothing_new():
    agreement = LocalAgreement()
    agreement.update("the cat")
    assert agreement.update("a dog sat") == Partial("a dog sat", 0)
    assert agreement.stable_text == ""


def test_partials_of_a_fraction_of_a_word_publish_nothing():
    # What tiny.en wrote for the first 100-300 ms of the shared sentences.
    for junk in ("", "n", "S", "3", ".", "f"):
        assert partial_text(junk) == ""
    for word in ("as", "I", "He", "你好", "after"):
        assert partial_text(word) == word


def test_a_partial_that_is_one_phrase_looped_is_published_once():
    assert partial_text("He could. He could. He could.") == "He could."
    assert partial_text("For a... For a... For a...") == "For a..."
    assert partial_text("he hoped, he hoped, he hoped,") == "he hoped,"
    # A phrase that does not just repeat is left alone.
    assert partial_text("he could he could wait") == "he could he could wait"
    assert partial_text("He could walk.") == "He could walk."
