"""Side-by-side benchmarks: each compares against a baseline in one run and prints ratios."""
