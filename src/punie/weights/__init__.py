"""punie.weights"""
