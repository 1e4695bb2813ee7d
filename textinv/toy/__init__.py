"""A small world of coloured shapes and a Stable-Diffusion-shaped model small enough for any CPU."""
