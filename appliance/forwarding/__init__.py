"""Mail the fleet forwards to outside addresses: the Sender Rewriting Scheme of its envelope sender, and the
way back for the bounces to the rewritten addresses."""
