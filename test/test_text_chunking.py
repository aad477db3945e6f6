"""text.split_sentences: sentence-aware pieces that never drop, reorder or cut text, and never cut a tag."""
import random
import re

import pytest

from ros2_chatterbox import text

TAG = re.compile(r"\[[^\[\]]{1,32}\]")
TAGS = ["[laugh]", "[sigh]", "[clear throat]", "[chuckle]", "[um. yes]", "[a, b]"]
WORDS = ["hello", "robot", "battery", "Dr.", "e.g.", "3.5", "kg", "world", "Mr.", "okay", "the", "is", "\u2014",
         "caf\u00e9", "\u201cquoted\u201d", "(aside)", "x" * 70, "Supercalifragilisticexpialidocious" * 3]
ENDS = ["", "", "", ".", ",", "!", "?", "...", ";", ":", "?!", ".\u201d", ")."]


def reconstruct(pieces, normalized):
    """Walk through the normalized text consuming the pieces in order; a single space may sit between two pieces."""
    pos = 0
    for i, piece in enumerate(pieces):
        if i and normalized.startswith(" ", pos):
            pos += 1
        assert normalized.startswith(piece, pos), f"piece {i} {piece!r} not found at {pos} in {normalized!r}"
        pos += len(piece)
    assert pos == len(normalized), f"text after {pos} was dropped: {normalized[pos:]!r}"


def tag_spans(s):
    return [m.span() for m in TAG.finditer(s)]


def check(raw, max_chars):
    normalized = text.normalize(raw)
    pieces = text.split_sentences(raw, max_chars)
    reconstruct(pieces, normalized)
    for piece in pieces:
        assert piece and piece == piece.strip()
        over = len(piece) > max_chars
        # only a tag longer than the limit (a piece of its own) may exceed it
        assert not over or TAG.fullmatch(piece), (max_chars, piece)
    # no tag of the text is cut: each one lies whole inside a single piece
    starts, pos = [], 0
    for i, piece in enumerate(pieces):
        if i and normalized.startswith(" ", pos):
            pos += 1
        starts.append((pos, pos + len(piece)))
        pos += len(piece)
    for a, b in tag_spans(normalized):
        assert any(s <= a and b <= e for s, e in starts), f"tag {normalized[a:b]!r} was cut"
    return pieces


def random_text(rng):
    out = []
    for _ in range(rng.randint(1, 60)):
        token = rng.choice(WORDS) if rng.random() > 0.15 else rng.choice(TAGS)
        out.append(token + rng.choice(ENDS))
        out.append(rng.choice([" ", " ", "  ", "\n", "\t "]))
    return "".join(out)


@pytest.mark.parametrize("seed", range(300))
def test_random_texts_keep_everything_in_order(seed):
    rng = random.Random(seed)
    check(random_text(rng), rng.choice([20, 25, 40, 80, 250]))


def test_sentences_are_kept_apart_and_joined_with_single_spaces():
    raw = "Hello there.  How are you?\nI am fine!  Thanks."
    pieces = text.split_sentences(raw, 250)
    assert pieces == ["Hello there.", "How are you?", "I am fine!", "Thanks."]
    assert " ".join(pieces) == text.normalize(raw)


def test_abbreviations_and_decimals_do_not_end_sentences():
    assert text.split_sentences("Dr. Smith weighs 3.5 kg, e.g. today. Next one.", 250) == [
        "Dr. Smith weighs 3.5 kg, e.g. today.", "Next one."]


def test_long_sentence_splits_at_clauses_then_words():
    raw = "one two three, four five six, seven eight nine ten eleven twelve thirteen"
    pieces = check(raw, 20)
    assert pieces[0] == "one two three,"
    assert all(len(p) <= 20 for p in pieces)


def test_tag_with_space_is_never_split_between_pieces():
    raw = "word " * 3 + "[clear throat] " + "word " * 3
    for limit in range(20, 40):
        pieces = check(raw, limit)
        assert any("[clear throat]" in p for p in pieces), (limit, pieces)


def test_punctuation_inside_a_tag_is_not_a_sentence_end():
    pieces = text.split_sentences("Well [um. yes] that is it. Done.", 250)
    assert pieces == ["Well [um. yes] that is it.", "Done."]


def test_hard_split_of_a_long_word_moves_the_cut_out_of_a_tag():
    word = "a" * 15 + "[laugh]" + "b" * 15
    pieces = check(word, 20)
    assert "".join(pieces) == word
    assert any("[laugh]" in p for p in pieces)


def test_tag_alone_longer_than_the_limit_stays_whole():
    tag = "[" + "x" * 30 + "]"
    assert check(tag + " ok", 20)[0] == tag


def test_tags_pass_through_unchanged():
    raw = "Hi [laugh] there! [sigh] Okay."
    assert text.split_sentences(raw, 250) == ["Hi [laugh] there!", "[sigh] Okay."]


def test_empty_and_whitespace():
    assert text.split_sentences("", 250) == []
    assert text.split_sentences(" \n\t ", 250) == []


def test_validate_rejects_tags_only():
    with pytest.raises(text.TextError):
        text.validate("[laugh] [sigh]", 100)
