"""tuneforge.tune"""
