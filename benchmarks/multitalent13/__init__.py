"""The 13 CT datasets of MultiTalent: description, download converter and training protocols."""
