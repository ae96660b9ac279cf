"""NITRO simulator: a NetScaler stand-in that speaks the NITRO subset we use, with fault injection."""
