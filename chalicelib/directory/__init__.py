"""The hospital directory: institutions patients and doctors pick from, searchable without a Scan."""
