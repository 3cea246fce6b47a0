"""Support code for the tests and benchmarks (as ``trio.testing`` is for trio): fakes and
simulators that drive the real core in fake time. The agent itself never imports it."""
