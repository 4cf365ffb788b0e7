"""Organ and vessel Dice (of training validation and the phantom evaluation): which labels count,
how studies are averaged, and the section the evaluation report gains."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.phantom_evaluation import mean_organ_dice, organ_markdown
from pipeline.train import organ_dice
from pipeline.types import Label


def test_organ_dice_scores_the_organs_in_truth_or_prediction_and_zero_for_a_missed_one() -> None:
    truth = np.zeros((4, 8, 8), np.uint8)
    truth[:, :4, :4] = Label.SPLEEN
    truth[:, 4:, 4:] = Label.PANCREAS
    truth[:, :4, 4:] = Label.LIVER
    prediction = truth.copy()
    prediction[:, :2, :4] = Label.BACKGROUND  # half the spleen
    prediction[prediction == Label.PANCREAS] = Label.BACKGROUND  # the pancreas missed
    prediction[0, 7, 0] = Label.GALLBLADDER  # a gallbladder the truth lacks
    scores = organ_dice(prediction, truth)
    assert set(scores) == {"SPLEEN", "PANCREAS", "GALLBLADDER"}  # liver is scored apart; no vessels in either
    assert scores["SPLEEN"] == pytest.approx(2 * 32 / (32 + 64))
    assert scores["PANCREAS"] == 0.0 and scores["GALLBLADDER"] == 0.0


def test_mean_organ_dice_averages_over_the_studies_that_score_each_organ() -> None:
    means = mean_organ_dice({"a": {"SPLEEN": 0.9, "STOMACH": 0.5}, "b": {"SPLEEN": 0.7}})
    assert list(means) == ["SPLEEN", "STOMACH"] and means["SPLEEN"] == pytest.approx(0.8)
    assert means["STOMACH"] == pytest.approx(0.5)
    section = organ_markdown(0.93, means, 2)
    assert "## Organs and vessels (2 studies)" in section and "| SPLEEN | 0.8000 |" in section
    assert "| LIVER (lesions included) | 0.9300 |" in section
