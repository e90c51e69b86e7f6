"""bench/stats.py: the bootstrap intervals and verdicts behind bench/run.py's table.

No root, no kernel, stdlib only. Run from anywhere:
    python3 -m unittest -v tests/bench/test_stats.py
"""

import os
import random
import statistics
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))

import stats  # noqa: E402


def noisy(center, spread, n, seed):
    rng = random.Random(seed)
    return [center + rng.uniform(-spread, spread) for _ in range(n)]


class Pairing(unittest.TestCase):
    def test_ratios_keep_repetitions_aligned(self):
        # A missing round drops its own repetition only, never shifts the later pairs.
        self.assertEqual(stats.paired_ratios([10, None, 30, 40], [5, 5, 10, 0]), [2.0, 3.0])

    def test_differences_keep_repetitions_aligned(self):
        self.assertEqual(stats.paired_differences([50.0, 60.0, None, 58.0], [30.0, None, 31.0, 36.0]),
                         [20.0, 22.0])


class Interval(unittest.TestCase):
    def test_identical_values_give_a_zero_width_interval(self):
        for v in (1.0, 0.1, 36.8):
            ci = stats.bootstrap_ci([v] * 7)
            self.assertEqual(ci[0], ci[1])
            self.assertAlmostEqual(ci[0], v, places=12)
            self.assertEqual(stats.half_width(ci), 0.0)

    def test_too_few_values_give_no_interval_and_no_verdict(self):
        self.assertIsNone(stats.bootstrap_ci([]))
        self.assertIsNone(stats.bootstrap_ci([1.0, 1.02]))
        est = stats.estimate([1.0, None, 1.02])
        self.assertEqual(est["n"], 2)
        self.assertIsNone(est["ci"])
        self.assertEqual(stats.verdict(est["ci"], 0.99, True), stats.NA)

    def test_interval_holds_the_mean_and_stays_within_the_sample(self):
        xs = noisy(1.0, 0.02, 7, seed=3)
        lo, hi = stats.bootstrap_ci(xs)
        self.assertLess(lo, statistics.mean(xs))
        self.assertGreater(hi, statistics.mean(xs))
        self.assertGreaterEqual(lo, min(xs))
        self.assertLessEqual(hi, max(xs))

    def test_width_matches_the_normal_approximation_for_a_large_sample(self):
        # For 400 normal values the percentile bootstrap of the mean is the textbook
        # mean +- 1.96 s / sqrt(n): a wrong percentile or resampling shows here.
        rng = random.Random(7)
        xs = [rng.gauss(100.0, 5.0) for _ in range(400)]
        expected = 1.96 * statistics.stdev(xs) / len(xs) ** 0.5
        self.assertAlmostEqual(stats.half_width(stats.bootstrap_ci(xs)), expected, delta=0.1 * expected)
        lo, hi = stats.bootstrap_ci(xs)
        self.assertAlmostEqual((lo + hi) / 2, statistics.mean(xs), delta=0.1 * expected)

    def test_percentile_interpolates_like_statistics_quantiles(self):
        xs = sorted(noisy(0.0, 1.0, 11, seed=5))
        q = statistics.quantiles(xs, n=40, method="inclusive")  # cut points at 2.5% steps
        self.assertAlmostEqual(stats._percentile(xs, 0.025), q[0], places=12)
        self.assertAlmostEqual(stats._percentile(xs, 0.975), q[-1], places=12)
        self.assertEqual(stats._percentile(xs, 1.0), xs[-1])
        self.assertEqual(stats._percentile(xs, 0.0), xs[0])

    def test_the_seed_makes_the_interval_reproducible(self):
        # 40 values: with 5-7 the interval's ends are often the same resample whatever the seed.
        xs = noisy(1.0, 0.03, 40, seed=11)
        self.assertEqual(stats.bootstrap_ci(xs), stats.bootstrap_ci(list(xs)))
        random.seed(12345)  # the global generator is not the one used
        self.assertEqual(stats.bootstrap_ci(xs), stats.bootstrap_ci(xs, seed=stats.SEED))
        self.assertNotEqual(stats.bootstrap_ci(xs), stats.bootstrap_ci(xs, seed=stats.SEED + 1))

    def test_higher_confidence_is_wider(self):
        xs = noisy(1.0, 0.03, 7, seed=13)
        self.assertGreater(stats.half_width(stats.bootstrap_ci(xs, confidence=0.99)),
                           stats.half_width(stats.bootstrap_ci(xs, confidence=0.80)))


class Verdict(unittest.TestCase):
    def test_identical_rounds_pass_or_miss_only_by_their_value(self):
        # A/A with equal rounds: ratio 1 exactly, zero width; the verdict is the comparison.
        ci = stats.bootstrap_ci(stats.paired_ratios([75000.0] * 5, [75000.0] * 5))
        self.assertEqual(stats.verdict(ci, 0.99, True), stats.PASS)
        self.assertEqual(stats.verdict(ci, 1.01, True), stats.MISS)
        self.assertTrue(stats.contains(ci, 1.0))

    def test_noise_around_the_target_is_never_a_pass(self):
        straddling = 0
        for seed in range(20):
            xs = noisy(0.99, 0.02, 5, seed=seed)
            ci = stats.bootstrap_ci(xs)
            if stats.contains(ci, 0.99):
                straddling += 1
                self.assertEqual(stats.verdict(ci, 0.99, True), stats.NOISE)
                self.assertEqual(stats.verdict(ci, 0.99, False), stats.NOISE)
        self.assertGreater(straddling, 10)

    def test_a_clear_shift_decides(self):
        low = stats.bootstrap_ci(noisy(0.95, 0.005, 5, seed=1))
        high = stats.bootstrap_ci(noisy(1.02, 0.005, 5, seed=2))
        self.assertEqual(stats.verdict(low, 0.99, True), stats.MISS)
        self.assertEqual(stats.verdict(high, 0.99, True), stats.PASS)
        # Budgets where lower is better (ns above the empty program, <= 20).
        cheap = stats.bootstrap_ci(noisy(12.0, 3.0, 7, seed=3))
        dear = stats.bootstrap_ci(noisy(28.0, 3.0, 7, seed=4))
        close = stats.bootstrap_ci(noisy(20.0, 3.0, 7, seed=5))
        self.assertEqual(stats.verdict(cheap, 20.0, False), stats.PASS)
        self.assertEqual(stats.verdict(dear, 20.0, False), stats.MISS)
        self.assertEqual(stats.verdict(close, 20.0, False), stats.NOISE)

    def test_boundaries(self):
        t = 0.99
        self.assertEqual(stats.verdict((0.99, 1.01), t, True), stats.PASS)  # ">= 0.99" holds at 0.99
        self.assertEqual(stats.verdict((0.98, 0.99), t, True), stats.NOISE)
        self.assertEqual(stats.verdict((0.97, 0.9899), t, True), stats.MISS)
        self.assertEqual(stats.verdict((10.0, 20.0), 20.0, False), stats.PASS)  # "<= 20" holds at 20
        self.assertEqual(stats.verdict((20.0, 25.0), 20.0, False), stats.NOISE)
        self.assertEqual(stats.verdict((20.001, 25.0), 20.0, False), stats.MISS)
        self.assertEqual(stats.verdict(None, t, True), stats.NA)
        self.assertEqual(stats.verdict((0.9, 1.1), None, True), stats.NA)

    def test_resolution_is_the_aa_half_width(self):
        self.assertAlmostEqual(stats.half_width((0.994, 1.006)), 0.006)
        self.assertIsNone(stats.half_width(None))


if __name__ == "__main__":
    unittest.main()
