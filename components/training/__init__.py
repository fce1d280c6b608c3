"""The train step's pieces: `presets` (models by name, Keras-free), `models` (their
architectures, compiled; evaluate and export load a trained model through it),
`training_data` (the batch stream), `callbacks` (training's Keras callbacks) and `distribute`
(tf.distribute strategies by name, and the Keras patch they need)."""
