"""cdc-agent: change-data-capture replication between a CRM and an ERP database."""

__version__ = "0.1.0"
