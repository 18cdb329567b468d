"""Messages a content check held: kept under data_dir/quarantine with their verdict until an administrator
releases (delivers as if the scan had passed) or deletes them (``mailfleet quarantine``)."""
