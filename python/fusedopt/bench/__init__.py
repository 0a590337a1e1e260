"""fusedopt benchmarks: fused ops side by side with tf.raw_ops and the
memory-bandwidth roofline, measured in one process (ratios, not absolute
times, are what carry from run to run)."""
