"""punie.training"""
