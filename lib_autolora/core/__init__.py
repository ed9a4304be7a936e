"""The host-free core: AutoLoRA's parameters, guidance math and console report."""
