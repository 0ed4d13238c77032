"""Sparsity methods on a GroupSet: WGSEF math, ProxSGD, SSR/AULM, the method registry."""
