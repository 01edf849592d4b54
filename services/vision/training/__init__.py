"""Offline tools for the vision service: labelled sets, training, evaluation, contact sheet.

These import the simulator's camera to render training and test images; the running service never imports
this package (a test checks), so its container needs neither the simulator nor the tools.
"""
