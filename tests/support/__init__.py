"""What the tests (and benchmarks) share: servers, processes, fixtures. See each module."""
