"""punie.adapters"""
