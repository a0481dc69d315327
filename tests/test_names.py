"""Image names: what the pairs files can hold is refused where a name enters, and every accepted name round
trips through write_pairs -> read_pairs."""

import random

import pytest

from vop.io import check_image_name, read_pairs, write_pairs

REFUSED = ["", " ", "a b.jpg", "a\tb.jpg", "a\nb.jpg", "a\rb.jpg", "trailing .jpg ", "nbsp\xa0.jpg",
           "ideographic\u3000space.jpg", "line\u2028sep.jpg", "next\x85line.jpg", "#1.jpg", "#"]


@pytest.mark.parametrize("name", REFUSED)
def test_names_pairs_files_cannot_hold_are_refused(tmp_path, name):
    with pytest.raises(ValueError) as info:
        check_image_name(name, "scenes/x/images")
    message = str(info.value)
    assert message.startswith(f"scenes/x/images: image name {name!r}") and "rename" in message
    # write_pairs refuses it before writing anything...
    with pytest.raises(ValueError, match="rename the image"):
        write_pairs(tmp_path / "pairs.txt", [("other.jpg", "b.jpg"), (name, "other.jpg")])
    assert not (tmp_path / "pairs.txt").exists()
    # ...because, written as the format has it, it would not come back as itself
    (tmp_path / "raw.txt").write_text(f"{name} other.jpg\n", encoding="utf-8")
    try:
        assert read_pairs(tmp_path / "raw.txt") != [(name, "other.jpg")]
    except ValueError:
        pass


@pytest.mark.parametrize("name", ["a\x00b", "esc\x1b[31m.jpg", "del\x7f", "bad\udcff.jpg"])
def test_control_characters_and_undecodable_names_are_refused(name):
    with pytest.raises(ValueError, match="rename the image"):
        check_image_name(name, "model/images.bin")


def test_every_accepted_name_round_trips_through_pairs_files(tmp_path):
    tokens = list("abcXYZ019_-./,;:'\"#%!~*?()[]{}@$&+=^`|<>\\") + [
        "é", "e\u0301", "ß", "日本", "😀", "\u200b", "\ufeff", "NA", "null", "None", "nan", ",", "''", '""',
        " ", "\t", "\n", "\r", "\xa0", "\u3000", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\x00", "\x1b", "\udcff"]
    rng = random.Random(0)
    names = ["NA", "a/b/c.jpg", "it's.jpg", 'say "cheese".png', "a,b.jpg", "日本/東京.jpg", "a#b.jpg"]
    names += ["".join(rng.choice(tokens) for _ in range(rng.randint(1, 6))) for _ in range(4000)]
    accepted = []
    for name in names:
        try:
            check_image_name(name, "folder")
        except ValueError:
            continue
        accepted.append(name)
    assert 1000 < len(accepted) < len(names) - 1000  # the generator exercises both sides
    pairs = list(zip(accepted, accepted[1:] + accepted[:1], strict=True)) + [(n, n) for n in accepted]
    write_pairs(tmp_path / "pairs.txt", pairs)
    assert read_pairs(tmp_path / "pairs.txt") == pairs
