"""Independent Python references for fdpo's tests (PyTorch, plain json/struct)."""
