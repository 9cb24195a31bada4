"""The share service. Its FHIR models get fhir_speedups before any of them is built (see that module)."""

from services.share import fhir_speedups

fhir_speedups.install()
