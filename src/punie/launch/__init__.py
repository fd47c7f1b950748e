"""punie.launch"""
