"""The fleet side (controller): tools and services that run off the devices."""
