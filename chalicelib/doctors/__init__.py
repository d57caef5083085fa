"""Anesthesiologists as others see them: vocabulary, ranking, calendar, discovery, storefront."""
