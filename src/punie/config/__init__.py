"""punie.config"""
