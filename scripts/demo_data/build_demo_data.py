"""Build the demo's embedded SQuAD v2.0-style sample: demo-train-v2.0.json and demo-dev-v2.0.json.

Every paragraph below is original writing about invented (but plausible) places, people and things;
nothing is taken from Wikipedia or SQuAD. The questions reuse the words of the sentence that holds the
answer, as SQuAD's crowd workers mostly did, so a small model can learn to match them.

How a question is written in the tables below:
    ("Question?", "span")                   answerable, one gold answer (train)
    ("Question?", ["span", "other span"])   answerable, several gold answers (dev)
    ("Question?", ("span", 1))              the span's second whole-word occurrence in the context
    ("Question?", None)                     unanswerable
    ("Question?", None, "span")             unanswerable, with a plausible (wrong) answer span

answer_start is computed here with `context.find`, counting only whole-word hits (a span must not start
or end inside a word); a span that occurs more than once must name its occurrence explicitly.

    python scripts/demo_data/build_demo_data.py           # (re)write the two JSON files
    python scripts/demo_data/build_demo_data.py --check   # exit 1 when the files are out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for atomic_io

from squad_internals import atomic_io  # noqa: E402

MIN_WORDS, MAX_WORDS = 80, 150

# ---------------------------------------------------------------------------------------------------
# Training paragraphs: 24 paragraphs in 14 articles, one gold answer per answerable question.
# ---------------------------------------------------------------------------------------------------
TRAIN = [
    {
        "title": "Harrowmere",
        "paragraphs": [
            {
                "context": (
                    "Harrowmere is a market town in the county of Wendlow, lying on the western shore of a "
                    "shallow lake called the Harrow Mere. The settlement grew up around a ford used by "
                    "drovers moving cattle from the uplands to the coast. It received a royal market charter "
                    "in 1342, and its weekly market, held every Thursday, is still the largest in the "
                    "county. In the sixteenth century the town prospered from the wool trade, and many of "
                    "the timber-framed houses on Fuller Street date from that period. A stone bridge with "
                    "seven arches replaced the old ford in 1611. The town's population reached 9,400 at the "
                    "most recent census, making it the second-largest settlement in Wendlow after the port "
                    "of Eddisford."
                ),
                "qas": [
                    ("In which county is the market town of Harrowmere?", ("Wendlow", 0)),
                    ("What is the name of the shallow lake beside Harrowmere?", "the Harrow Mere"),
                    ("What did the settlement grow up around?", "a ford"),
                    ("In what year did Harrowmere receive a royal market charter?", "1342"),
                    ("On which day is the weekly market held?", "Thursday"),
                    ("From which trade did the town prosper in the sixteenth century?", "the wool trade"),
                    ("On which street are many of the timber-framed houses?", "Fuller Street"),
                    ("How many arches does the stone bridge have?", "seven"),
                    ("What was the population of Harrowmere at the most recent census?", "9,400"),
                    ("Which port is the largest settlement in Wendlow?", "Eddisford"),
                    ("In what year did Harrowmere receive a city charter?", None, "1342"),
                    ("Who built the stone bridge that replaced the old ford?", None),
                ],
            },
            {
                "context": (
                    "Today Harrowmere is known for light engineering and for the Harrowmere Pottery, founded "
                    "in 1878 by the brothers Amos and Jethro Quint. The pottery produced blue-glazed "
                    "stoneware that was exported as far as Argentina, and it employed more than 300 people "
                    "at its peak in the 1920s. After the pottery closed in 1964, its kiln buildings were "
                    "converted into the Quint Museum, which opened to visitors in 1981. The town is served "
                    "by a railway station on the Eddisford branch line, opened in 1859, and by the A417 "
                    "road. Each September the town hosts the Mere Regatta, a rowing contest on the lake that "
                    "has been held since 1836. Harrowmere is twinned with the French town of "
                    "Saint-Aubin-les-Prés."
                ),
                "qas": [
                    ("Who founded the Harrowmere Pottery?", "Amos and Jethro Quint"),
                    ("In what year was the Harrowmere Pottery founded?", "1878"),
                    ("What did the pottery produce?", "blue-glazed stoneware"),
                    ("How far was the stoneware exported?", "Argentina"),
                    ("How many people did the pottery employ at its peak?", "more than 300"),
                    ("When did the pottery close?", "1964"),
                    ("What were the kiln buildings converted into?", "the Quint Museum"),
                    ("What is the rowing contest held each September called?", "the Mere Regatta"),
                    ("Since what year has the Mere Regatta been held?", "1836"),
                    ("Which French town is Harrowmere twinned with?", "Saint-Aubin-les-Prés"),
                    ("In what year did the railway station on the Eddisford branch line close?",
                     None, "1859"),
                    ("Which German town is Harrowmere twinned with?", None, "Saint-Aubin-les-Prés"),
                ],
            },
        ],
    },
    {
        "title": "Velka (river)",
        "paragraphs": [
            {
                "context": (
                    "The Velka is a river in the eastern lowlands of Marrovia, flowing 312 kilometres from "
                    "its source in the Brannock Hills to its mouth at the Gulf of Serin. Its largest "
                    "tributary is the Olm, which joins it at the town of Kestrel Ford. For most of its "
                    "length the Velka meanders through flat farmland, and its course has shifted several "
                    "times since records began. A great flood in 1903 cut a new channel near the village of "
                    "Dubrany, leaving the old bed as a chain of oxbow lakes. The river is navigable by "
                    "barges for 140 kilometres upstream from the gulf, and a series of nine locks was built "
                    "between 1880 and 1895 to make this possible."
                ),
                "qas": [
                    ("How long is the Velka?", "312 kilometres"),
                    ("Where is the source of the Velka?", "the Brannock Hills"),
                    ("Where is the mouth of the Velka?", "the Gulf of Serin"),
                    ("What is the largest tributary of the Velka?", "the Olm"),
                    ("At which town does the Olm join the Velka?", "Kestrel Ford"),
                    ("What does the Velka meander through for most of its length?", "flat farmland"),
                    ("In what year did a great flood cut a new channel?", "1903"),
                    ("Near which village did the flood cut a new channel?", "Dubrany"),
                    ("What did the old bed become after the flood?", "a chain of oxbow lakes"),
                    ("For how far upstream is the river navigable by barges?", "140 kilometres"),
                    ("How many locks were built to make the river navigable?", "nine"),
                    ("What is the smallest tributary of the Velka?", None, "the Olm"),
                    ("In what year did a great flood destroy the town of Kestrel Ford?", None, "1903"),
                    ("At which town does the Olm join the Gulf of Serin?", None, "Kestrel Ford"),
                ],
            },
            {
                "context": (
                    "The lower Velka is an important habitat for wildlife. Its reed beds shelter large "
                    "colonies of herons, and the river is one of the last strongholds of the Velka sturgeon, "
                    "a fish that can grow to two metres in length. Numbers of sturgeon fell sharply in the "
                    "twentieth century because of dams and pollution from tanneries. In 1987 the government "
                    "created the Velka Delta Reserve, covering 46,000 hectares of marsh and open water at "
                    "the river's mouth. A fish pass added to the lowest lock in 2009 allows sturgeon to "
                    "reach spawning gravels upstream for the first time in a century. Anglers are permitted "
                    "to fish for pike and perch in the reserve but must release any sturgeon they catch."
                ),
                "qas": [
                    ("What do the reed beds of the lower Velka shelter?", "large colonies of herons"),
                    ("How long can the Velka sturgeon grow?", "two metres"),
                    ("Why did numbers of sturgeon fall sharply in the twentieth century?",
                     "dams and pollution from tanneries"),
                    ("In what year did the government create the Velka Delta Reserve?", "1987"),
                    ("How large is the Velka Delta Reserve?", "46,000 hectares"),
                    ("When was a fish pass added to the lowest lock?", "2009"),
                    ("What does the fish pass allow sturgeon to reach?", "spawning gravels"),
                    ("Which fish are anglers permitted to fish for in the reserve?", "pike and perch"),
                    ("What must anglers do with any sturgeon they catch?", "release"),
                    ("In what year was the Velka Delta Reserve enlarged?", None, "1987"),
                    ("How much does a fully grown Velka sturgeon weigh?", None, "two metres"),
                ],
            },
        ],
    },
    {
        "title": "Odile Marchetti",
        "paragraphs": [
            {
                "context": (
                    "Odile Marchetti (1851–1919) was an engineer and inventor best known for the pneumatic "
                    "parcel tube, a system that carried small packages through underground pipes using "
                    "compressed air. She was born in the river port of Lanzo, the daughter of a clockmaker, "
                    "and learned to repair watches in her father's workshop before she was twelve. In 1869 "
                    "she moved to the city of Varenne to study mechanics at the Polytechnic School, where "
                    "she was one of only three women admitted that year. Her first patent, granted in 1874, "
                    "was for an improved pressure valve for steam boilers. The income from this valve "
                    "allowed her to open a small laboratory on Rue des Tanneurs in 1876."
                ),
                "qas": [
                    ("What is Odile Marchetti best known for?", "the pneumatic parcel tube"),
                    ("What did the pneumatic parcel tube use to carry packages?", "compressed air"),
                    ("Where was Odile Marchetti born?", "Lanzo"),
                    ("What was the occupation of Marchetti's father?", "a clockmaker"),
                    ("What did she learn to repair in her father's workshop?", "watches"),
                    ("In what year did she move to the city of Varenne?", "1869"),
                    ("What did she study at the Polytechnic School?", "mechanics"),
                    ("How many women were admitted to the Polytechnic School that year?", "three"),
                    ("When was her first patent granted?", "1874"),
                    ("On which street did she open a small laboratory?", "Rue des Tanneurs"),
                    ("In what year did Marchetti graduate from the Polytechnic School?", None, "1874"),
                    ("What was the name of Marchetti's mother?", None),
                    ("What was her second patent for?", None, "an improved pressure valve for steam boilers"),
                ],
            },
            {
                "context": (
                    "Marchetti demonstrated her first working parcel tube in 1882, linking the central post "
                    "office of Varenne with a bank 600 metres away. Within a decade the network had grown to "
                    "38 kilometres of pipe serving hospitals, newspapers and government offices. Parcels "
                    "travelled in leather-lined brass canisters at about 35 kilometres per hour. She also "
                    "designed a silent typewriter carriage and a folding hospital bed, though neither sold "
                    "widely. Marchetti never married and spent her last years teaching at the Polytechnic "
                    "School. The Varenne parcel network remained in use until 1958, and a restored section "
                    "of tube can be seen at the city's Museum of Communication."
                ),
                "qas": [
                    ("When did Marchetti demonstrate her first working parcel tube?", "1882"),
                    ("What did the first parcel tube link the central post office with?", "a bank"),
                    ("How far from the post office was the bank?", "600 metres"),
                    ("How long had the network grown to within a decade?", "38 kilometres"),
                    ("What did parcels travel in?", "leather-lined brass canisters"),
                    ("How fast did parcels travel?", "about 35 kilometres per hour"),
                    ("Where did Marchetti spend her last years teaching?", "the Polytechnic School"),
                    ("Until what year did the Varenne parcel network remain in use?", "1958"),
                    ("Where can a restored section of tube be seen?", "the city's Museum of Communication"),
                    ("Who bought the design for the silent typewriter carriage?", None),
                    ("How fast did canisters travel in the hospital network?", None,
                     "about 35 kilometres per hour"),
                ],
            },
        ],
    },
    {
        "title": "Lantern Night of Sorrenby",
        "paragraphs": [
            {
                "context": (
                    "The Lantern Night of Sorrenby is an autumn festival held on the first Saturday of "
                    "November in the coastal village of Sorrenby. Its origins are traced to 1741, when "
                    "villagers lit lanterns along the cliff path to guide home a fishing fleet caught in a "
                    "storm. Today several thousand visitors gather to watch a procession of paper lanterns, "
                    "many shaped like fish, boats and seabirds, carried from the harbour to the old chapel "
                    "on Gull Point. The largest lantern, known as the Great Herring, is about six metres "
                    "long and takes a team of volunteers three months to build. The evening ends with the "
                    "lanterns being set in a row along the sea wall."
                ),
                "qas": [
                    ("When is the Lantern Night of Sorrenby held?", "the first Saturday of November"),
                    ("In which coastal village is the Lantern Night held?", ("Sorrenby", 1)),
                    ("To what year are the origins of the festival traced?", "1741"),
                    ("Where did villagers light lanterns in 1741?", "along the cliff path"),
                    ("Why did the villagers light lanterns along the cliff path?",
                     "to guide home a fishing fleet caught in a storm"),
                    ("What are many of the paper lanterns shaped like?", "fish, boats and seabirds"),
                    ("Where is the old chapel?", "Gull Point"),
                    ("What is the largest lantern known as?", "the Great Herring"),
                    ("How long is the Great Herring?", "about six metres"),
                    ("How long does it take volunteers to build the Great Herring?", "three months"),
                    ("What is the smallest lantern known as?", None, "the Great Herring"),
                    ("In what year was the old chapel on Gull Point built?", None, "1741"),
                    ("How long does it take volunteers to build the smallest lantern?", None, "three months"),
                ],
            },
            {
                "context": (
                    "Music has been part of the festival since the 1920s, when the Sorrenby Silver Band "
                    "first played at the head of the procession. The band, founded in 1898, has 24 members "
                    "and rehearses in a former net loft on Quay Lane. Food stalls along the harbour sell "
                    "smoked mackerel, spiced apple cake and a dark ale brewed specially for the night by the "
                    "Cliffside Brewery. In 2015 the festival committee banned plastic decorations, and all "
                    "lanterns must now be made from paper, willow and cotton string. Money raised from the "
                    "event supports the village lifeboat station, which received a new boat named Resolute "
                    "in 2019."
                ),
                "qas": [
                    ("Since when has music been part of the festival?", "the 1920s"),
                    ("Which band first played at the head of the procession?", "the Sorrenby Silver Band"),
                    ("When was the Sorrenby Silver Band founded?", "1898"),
                    ("How many members does the band have?", "24"),
                    ("Where does the band rehearse?", "a former net loft on Quay Lane"),
                    ("Which brewery brews a dark ale specially for the night?", "the Cliffside Brewery"),
                    ("What did the festival committee ban in 2015?", "plastic decorations"),
                    ("What must all lanterns now be made from?", "paper, willow and cotton string"),
                    ("What does the money raised from the event support?", "the village lifeboat station"),
                    ("What was the new lifeboat named?", "Resolute"),
                    ("Who conducts the Sorrenby Silver Band?", None),
                    ("In what year was the village lifeboat station founded?", None, "2019"),
                    ("How many members did the band have when it was founded?", None, "24"),
                ],
            },
        ],
    },
    {
        "title": "SS Corvina Star",
        "paragraphs": [
            {
                "context": (
                    "The SS Corvina Star was a passenger steamship built in 1897 by the Halden & Rusk yard "
                    "at Port Aubrey for the Meridian Line. She measured 142 metres in length and could carry "
                    "1,150 passengers in three classes. Her twin triple-expansion engines gave a service "
                    "speed of 17 knots, which was fast for a ship of her size at the time. The Corvina Star "
                    "was launched by Lady Harriet Rusk, wife of one of the yard's owners, and made her "
                    "maiden voyage from Port Aubrey to Cape Harlow in March 1898. Her first-class dining "
                    "saloon, panelled in walnut and lit by a glass dome, was widely admired in the press."
                ),
                "qas": [
                    ("When was the SS Corvina Star built?", "1897"),
                    ("Which yard built the SS Corvina Star?", "Halden & Rusk"),
                    ("For which line was the ship built?", "the Meridian Line"),
                    ("How long was the Corvina Star?", "142 metres"),
                    ("How many passengers could the Corvina Star carry?", "1,150"),
                    ("What was her service speed?", "17 knots"),
                    ("Who launched the Corvina Star?", "Lady Harriet Rusk"),
                    ("Where did the Corvina Star sail to on her maiden voyage?", "Cape Harlow"),
                    ("When did she make her maiden voyage?", "March 1898"),
                    ("What was the first-class dining saloon panelled in?", "walnut"),
                    ("Who designed the first-class dining saloon?", None),
                    ("How many crew members did the Corvina Star carry?", None, "1,150"),
                    ("How many passengers could she carry in first class?", None, "1,150"),
                ],
            },
            {
                "context": (
                    "During the First World War the Corvina Star was requisitioned as a hospital ship and "
                    "painted white with green bands. She carried more than 20,000 wounded soldiers between "
                    "1915 and 1918. Returned to the Meridian Line in 1919, she resumed commercial service, "
                    "but by then newer ships had made her old-fashioned. On 14 January 1926 she ran aground "
                    "in fog on the Skellet Rocks off Cape Harlow. All 611 people on board were rescued by "
                    "local boats, but the ship broke in two during a gale four days later. Divers located "
                    "the wreck in 1974 at a depth of 28 metres, and it is now a popular site for "
                    "recreational diving."
                ),
                "qas": [
                    ("What was the Corvina Star requisitioned as during the First World War?",
                     "a hospital ship"),
                    ("What colour were the bands painted on the hospital ship?", "green"),
                    ("How many wounded soldiers did she carry?", "more than 20,000"),
                    ("When was the ship returned to the Meridian Line?", "1919"),
                    ("On what date did the Corvina Star run aground?", "14 January 1926"),
                    ("On which rocks did she run aground?", "the Skellet Rocks"),
                    ("How many people on board were rescued?", "611"),
                    ("When did the ship break in two?", "four days later"),
                    ("In what year did divers locate the wreck?", "1974"),
                    ("At what depth does the wreck lie?", "28 metres"),
                    ("Who was the captain of the Corvina Star when she ran aground?", None),
                    ("In what year did divers raise the wreck?", None, "1974"),
                    ("How many wounded soldiers did she carry after 1918?", None, "more than 20,000"),
                ],
            },
        ],
    },
    {
        "title": "Mount Tessel Railway",
        "paragraphs": [
            {
                "context": (
                    "The Mount Tessel Railway is a rack railway that climbs from the lakeside town of Brenn "
                    "to the summit station of Tessel Kulm, at an altitude of 2,104 metres. The line is 7.6 "
                    "kilometres long and overcomes a height difference of 1,530 metres, with a maximum "
                    "gradient of 48 percent. Construction began in 1889 under the direction of the engineer "
                    "Matthias Ebner and took three years. Workers blasted four tunnels through the "
                    "limestone, the longest of which, the Eagle Tunnel, is 410 metres long. The railway was "
                    "opened on 1 June 1892 and was electrified in 1911, replacing the original steam "
                    "locomotives."
                ),
                "qas": [
                    ("What kind of railway is the Mount Tessel Railway?", "a rack railway"),
                    ("From which lakeside town does the railway climb?", "Brenn"),
                    ("What is the summit station called?", "Tessel Kulm"),
                    ("At what altitude is the summit station?", "2,104 metres"),
                    ("How long is the line?", "7.6 kilometres"),
                    ("What is the maximum gradient of the line?", "48 percent"),
                    ("Under whose direction did construction begin in 1889?", "Matthias Ebner"),
                    ("How many tunnels did workers blast through the limestone?", "four"),
                    ("What is the longest tunnel called?", "the Eagle Tunnel"),
                    ("When was the railway opened?", "1 June 1892"),
                    ("When was the railway electrified?", "1911"),
                    ("How many workers died building the railway?", None),
                    ("How long is the shortest tunnel?", None, "410 metres"),
                    ("When did construction of the Eagle Tunnel begin?", None, "1889"),
                ],
            },
            {
                "context": (
                    "Trains on the Mount Tessel Railway run every 40 minutes in summer and hourly in winter. "
                    "The journey to the summit takes 52 minutes, and each train consists of a single railcar "
                    "pushing an open carriage, with room for 160 passengers in total. About 450,000 people "
                    "ride the line each year, most of them tourists visiting the viewpoint at Tessel Kulm, "
                    "from which on clear days the peaks of three countries are visible. A halfway station at "
                    "Alp Sennhof serves hikers and a dairy farm that sells cheese to passengers. In 2017 the "
                    "operating company ordered five new railcars from a manufacturer in Winterthal, and "
                    "these entered service in 2020."
                ),
                "qas": [
                    ("How often do trains run in summer?", "every 40 minutes"),
                    ("How often do trains run in winter?", "hourly"),
                    ("How long does the journey to the summit take?", "52 minutes"),
                    ("What does each train consist of?", "a single railcar pushing an open carriage"),
                    ("How many passengers does each train have room for?", "160"),
                    ("How many people ride the line each year?", "About 450,000"),
                    ("What is visible from the viewpoint on clear days?", "the peaks of three countries"),
                    ("Where is the halfway station?", "Alp Sennhof"),
                    ("How many new railcars did the operating company order in 2017?", "five"),
                    ("When did the new railcars enter service?", "2020"),
                    ("How much does a return ticket to the summit cost?", None),
                    ("How long does the journey down from the summit take?", None, "52 minutes"),
                    ("How many railcars did the company order from a manufacturer in Brenn?", None, "five"),
                ],
            },
        ],
    },
    {
        "title": "Amber-throated fen warbler",
        "paragraphs": [
            {
                "context": (
                    "The amber-throated fen warbler is a small songbird that breeds in reed beds and wet "
                    "meadows across the northern marshlands. Adults are about 13 centimetres long and weigh "
                    "11 to 14 grams. The upperparts are olive-brown, while the throat of the male is a "
                    "bright amber colour that gives the species its name; females have a paler, buff throat. "
                    "The song is a rapid series of dry clicks followed by a liquid trill, usually delivered "
                    "from the top of a reed stem at dawn. The species was first described in 1834 by the "
                    "naturalist Edvard Lindqvist, who collected a specimen near the mouth of the Velka."
                ),
                "qas": [
                    ("Where does the amber-throated fen warbler breed?", "reed beds and wet meadows"),
                    ("How long are adult fen warblers?", "about 13 centimetres"),
                    ("How much do adults weigh?", "11 to 14 grams"),
                    ("What colour are the upperparts?", "olive-brown"),
                    ("What colour is the throat of the male?", "bright amber"),
                    ("What kind of throat do females have?", "a paler, buff throat"),
                    ("What does the song begin with?", "a rapid series of dry clicks"),
                    ("When is the song usually delivered?", "at dawn"),
                    ("In what year was the species first described?", "1834"),
                    ("Who first described the species?", "Edvard Lindqvist"),
                    ("How many eggs does the amber-throated fen warbler lay?", None),
                    ("What colour is the throat of a young fen warbler?", None, "bright amber"),
                    ("Who collected a specimen near the mouth of the Olm?", None, "Edvard Lindqvist"),
                ],
            },
            {
                "context": (
                    "Fen warblers are migratory, leaving their breeding grounds in late August to spend the "
                    "winter in the river valleys of the south. The female builds a deep cup-shaped nest "
                    "woven from grass and lined with feathers, attached to three or four upright reed stems. "
                    "A typical clutch contains four to six eggs, which are incubated for 12 days. Both "
                    "parents feed the chicks, mainly with mayflies, small beetles and spiders. The "
                    "population declined by about a third between 1970 and 2000 as wetlands were drained for "
                    "farming, but the species has recovered in protected areas such as the Velka Delta "
                    "Reserve, which now holds an estimated 3,200 breeding pairs."
                ),
                "qas": [
                    ("When do fen warblers leave their breeding grounds?", "late August"),
                    ("Where do fen warblers spend the winter?", "the river valleys of the south"),
                    ("Who builds the nest?", "The female"),
                    ("What is the nest woven from?", "grass"),
                    ("What is the nest lined with?", "feathers"),
                    ("How many eggs does a typical clutch contain?", "four to six"),
                    ("For how long are the eggs incubated?", "12 days"),
                    ("What do the parents mainly feed the chicks with?",
                     "mayflies, small beetles and spiders"),
                    ("By how much did the population decline between 1970 and 2000?", "about a third"),
                    ("How many breeding pairs does the Velka Delta Reserve hold?", "an estimated 3,200"),
                    ("When do fen warblers return to their breeding grounds?", None, "late August"),
                    ("How long do the chicks stay in the nest?", None, "12 days"),
                ],
            },
        ],
    },
    {
        "title": "Kelmoor Observatory",
        "paragraphs": [
            {
                "context": (
                    "Kelmoor Observatory is an astronomical observatory on Kelmoor Fell, a moorland hill "
                    "rising to 612 metres. It was founded in 1908 by the wealthy mill owner Josiah Pell, a "
                    "keen amateur astronomer who wanted a site above the smoke of the industrial valleys. "
                    "Its first instrument was a 24-inch reflecting telescope made by the firm of Carver and "
                    "Sons. In 1931 the observatory was given to the University of Norbury, which still "
                    "operates it. Astronomers at Kelmoor discovered the comet 1947 Pell-Arden, named after "
                    "its co-discoverers Ruth Pell, the founder's granddaughter, and Thomas Arden."
                ),
                "qas": [
                    ("On which hill is Kelmoor Observatory?", "Kelmoor Fell"),
                    ("How high does Kelmoor Fell rise?", "612 metres"),
                    ("When was the observatory founded?", "1908"),
                    ("Who founded Kelmoor Observatory?", "Josiah Pell"),
                    ("Where did Pell want a site for the observatory?",
                     "above the smoke of the industrial valleys"),
                    ("What was the first instrument of the observatory?", "a 24-inch reflecting telescope"),
                    ("Which firm made the first telescope?", "Carver and Sons"),
                    ("To which university was the observatory given in 1931?", "the University of Norbury"),
                    ("Which comet did astronomers at Kelmoor discover?", "1947 Pell-Arden"),
                    ("Who was Ruth Pell?", "the founder's granddaughter"),
                    ("Which university built Kelmoor Observatory?", None, "the University of Norbury"),
                    ("In what year did Thomas Arden join the observatory?", None, "1931"),
                    ("Who was Thomas Arden's granddaughter?", None, "Ruth Pell"),
                ],
            },
            {
                "context": (
                    "Because of growing light pollution from nearby towns, research at Kelmoor declined "
                    "after the 1970s, and the main telescope is now used mostly for teaching. The "
                    "observatory also houses a seismograph, installed in 1962, which has recorded earth "
                    "tremors for more than sixty years. A visitor centre opened in 2004 and offers public "
                    "viewing evenings on Fridays from October to March, when the nights are longest. In 2012 "
                    "the surrounding moor was declared a dark sky park, and the district council agreed to "
                    "replace street lamps in three villages with shielded lights. The observatory's archive "
                    "holds about 18,000 photographic plates taken between 1910 and 1985."
                ),
                "qas": [
                    ("Why did research at Kelmoor decline after the 1970s?",
                     "growing light pollution from nearby towns"),
                    ("What is the main telescope now used mostly for?", "teaching"),
                    ("When was the seismograph installed?", "1962"),
                    ("What has the seismograph recorded for more than sixty years?", "earth tremors"),
                    ("When did the visitor centre open?", "2004"),
                    ("On which day does the visitor centre offer public viewing evenings?", "Fridays"),
                    ("What was the surrounding moor declared in 2012?", "a dark sky park"),
                    ("In how many villages were street lamps replaced with shielded lights?", "three"),
                    ("How many photographic plates does the archive hold?", "about 18,000"),
                    ("Who installed the seismograph in 1962?", None),
                    ("In what year did the visitor centre close?", None, "2004"),
                ],
            },
        ],
    },
    {
        "title": "Ilse Braunfeld",
        "paragraphs": [
            {
                "context": (
                    "Ilse Braunfeld (1872–1940) was a composer and organist from the city of Maarburg. She "
                    "studied piano with her mother before entering the Maarburg Conservatory at the age of "
                    "fifteen. In 1896 she became the first woman appointed organist of St. Gertrude's "
                    "Church, a post she held for thirty-one years. Braunfeld wrote more than 200 works, "
                    "including four symphonies, a violin concerto and the opera The Salt Queen, which "
                    "premiered in 1911. Her music was largely forgotten after her death, but a revival began "
                    "in the 1990s when the conductor Paulo Esteves recorded her symphonies with the Maarburg "
                    "Philharmonic."
                ),
                "qas": [
                    ("Which city was Ilse Braunfeld from?", ("Maarburg", 0)),
                    ("Who did Braunfeld study piano with?", "her mother"),
                    ("At what age did she enter the Maarburg Conservatory?", "fifteen"),
                    ("In what year was she appointed organist of St. Gertrude's Church?", "1896"),
                    ("How long did she hold the post of organist?", "thirty-one years"),
                    ("How many works did Braunfeld write?", "more than 200"),
                    ("How many symphonies did Braunfeld write?", "four"),
                    ("What is the name of her opera?", "The Salt Queen"),
                    ("When did The Salt Queen premiere?", "1911"),
                    ("Which conductor recorded her symphonies?", "Paulo Esteves"),
                    ("Who wrote the libretto of The Salt Queen?", None),
                    ("Which orchestra gave the premiere of The Salt Queen?",
                     None, "the Maarburg Philharmonic"),
                    ("In what year did Braunfeld leave the Maarburg Conservatory?", None, "1896"),
                ],
            },
            {
                "context": (
                    "Braunfeld's style combines the rich harmonies of late Romantic music with melodies "
                    "drawn from the folk songs of her grandmother's mountain village. Her organ works, "
                    "especially the Six Chorale Fantasias of 1903, are still performed in churches across "
                    "the region. Critics of her own time praised the orchestration of the Second Symphony "
                    "but found the Fourth too long; it lasts nearly seventy minutes. She also taught "
                    "composition privately, and among her pupils was the film composer Gustav Rehn. The Ilse "
                    "Braunfeld Society, founded in 1994, publishes new editions of her scores and awards a "
                    "prize for young organists every two years."
                ),
                "qas": [
                    ("Where were the melodies in Braunfeld's music drawn from?",
                     "the folk songs of her grandmother's mountain village"),
                    ("Which of her organ works are still performed in churches?",
                     "the Six Chorale Fantasias"),
                    ("In what year were the Six Chorale Fantasias written?", "1903"),
                    ("Which symphony did critics praise for its orchestration?", "the Second Symphony"),
                    ("Which symphony did critics find too long?", "the Fourth"),
                    ("How long does the Fourth Symphony last?", "nearly seventy minutes"),
                    ("Which film composer was among her pupils?", "Gustav Rehn"),
                    ("When was the Ilse Braunfeld Society founded?", "1994"),
                    ("How often does the society award a prize for young organists?", "every two years"),
                    ("Which symphony did critics find too short?", None, "the Fourth"),
                    ("Who founded the Ilse Braunfeld Society?", None),
                ],
            },
        ],
    },
    {
        "title": "Greyhollow cheese",
        "paragraphs": [
            {
                "context": (
                    "Greyhollow is a hard cheese made from the milk of sheep grazing on the limestone hills "
                    "around the village of Greyhollow. Production is recorded from at least 1560, when the "
                    "cheese was used to pay rent to the local abbey. Each wheel weighs about 8 kilograms and "
                    "is matured for at least nine months in cool caves, where a natural grey mould forms on "
                    "the rind. The cheese has a crumbly texture and a nutty, slightly salty flavour. Since "
                    "2006 the name has been protected, and only eleven farms are permitted to sell their "
                    "cheese as Greyhollow. Annual production is about 90 tonnes, most of it sold within the "
                    "country."
                ),
                "qas": [
                    ("What kind of cheese is Greyhollow?", "a hard cheese"),
                    ("The milk of which animal is Greyhollow made from?", "sheep"),
                    ("From what year is production of Greyhollow recorded?", "1560"),
                    ("What was the cheese used to pay to the local abbey?", "rent"),
                    ("How much does each wheel weigh?", "about 8 kilograms"),
                    ("How long is the cheese matured?", "at least nine months"),
                    ("Where is the cheese matured?", "cool caves"),
                    ("What forms on the rind?", "a natural grey mould"),
                    ("Since what year has the name been protected?", "2006"),
                    ("How many farms are permitted to sell their cheese as Greyhollow?", "only eleven"),
                    ("What is the annual production of Greyhollow?", "about 90 tonnes"),
                    ("Which country imports the most Greyhollow?", None),
                    ("When was the local abbey founded?", None, "1560"),
                    ("How much does a wheel of goat's cheese from Greyhollow weigh?", None,
                     "about 8 kilograms"),
                ],
            },
        ],
    },
    {
        "title": "Carrant",
        "paragraphs": [
            {
                "context": (
                    "Carrant is a rocky island lying 19 kilometres off the western coast, with an area of 34 "
                    "square kilometres. Its highest point is Ben Corra, at 488 metres. The island is ringed "
                    "by sea cliffs on its north and west sides, while the sheltered eastern shore has sandy "
                    "bays and the only harbour, at the village of Kilbrae. The climate is mild and windy; "
                    "snow rarely lies for more than a day. Carrant is famous for its seabird colonies, "
                    "including an estimated 60,000 pairs of puffins that nest in burrows on the grassy cliff "
                    "tops. A ferry from the mainland port of Ardmain makes the crossing in about 75 minutes."
                ),
                "qas": [
                    ("How far off the western coast does Carrant lie?", "19 kilometres"),
                    ("What is the area of Carrant?", "34 square kilometres"),
                    ("What is the highest point of Carrant?", "Ben Corra"),
                    ("How high is Ben Corra?", "488 metres"),
                    ("On which sides is the island ringed by sea cliffs?", "north and west"),
                    ("In which village is the island's only harbour?", "Kilbrae"),
                    ("What is the climate of Carrant like?", "mild and windy"),
                    ("How many pairs of puffins nest on Carrant?", "an estimated 60,000"),
                    ("Where do the puffins nest?", "in burrows on the grassy cliff tops"),
                    ("From which mainland port does the ferry sail?", "Ardmain"),
                    ("How long does the ferry take to make the crossing?", "about 75 minutes"),
                    ("How many pairs of gannets nest on Carrant?", None, "an estimated 60,000"),
                    ("How far off the eastern coast does Carrant lie?", None, "19 kilometres"),
                    ("What is the highest point of Ardmain?", None, "Ben Corra"),
                ],
            },
            {
                "context": (
                    "People have lived on Carrant since at least the Bronze Age, and a ring of standing "
                    "stones near Kilbrae is thought to be about 4,000 years old. In the Middle Ages the "
                    "island belonged to the monks of St. Ferran, whose ruined chapel still stands above the "
                    "harbour. The population peaked at around 1,300 in 1841 but fell steeply after the "
                    "potato famine, when many families emigrated to Canada. Today about 210 people live on "
                    "Carrant, working mainly in fishing, sheep farming and tourism. The island gained a "
                    "mains electricity supply in 1968 and a primary school with its own broadband link in "
                    "2016."
                ),
                "qas": [
                    ("Since when have people lived on Carrant?", "at least the Bronze Age"),
                    ("How old is the ring of standing stones thought to be?", "about 4,000 years old"),
                    ("Who did the island belong to in the Middle Ages?", "the monks of St. Ferran"),
                    ("Where does the ruined chapel stand?", "above the harbour"),
                    ("In what year did the population peak?", "1841"),
                    ("What was the population of Carrant at its peak?", "around 1,300"),
                    ("To which country did many families emigrate?", "Canada"),
                    ("How many people live on Carrant today?", "about 210"),
                    ("When did the island gain a mains electricity supply?", "1968"),
                    ("When did the monks of St. Ferran leave the island?", None),
                    ("How many families emigrated to Canada after the potato famine?", None, "around 1,300"),
                ],
            },
        ],
    },
    {
        "title": "Stonebridge Library",
        "paragraphs": [
            {
                "context": (
                    "The Stonebridge Library is a public library in the town of Aldermoor, opened in 1889 "
                    "with funds left by the merchant Cornelius Stonebridge. The building, designed by the "
                    "architect Mary Felling, has a domed reading room 18 metres across, lit by sixteen round "
                    "windows. The library began with 12,000 volumes and now holds more than 250,000 items, "
                    "including a collection of local maps dating back to 1620. During the Second World War "
                    "its most valuable books were stored in a disused mine for safety. A children's wing was "
                    "added in 1972, and in 2021 the library installed solar panels on the flat roof of the "
                    "new wing."
                ),
                "qas": [
                    ("In which town is the Stonebridge Library?", "Aldermoor"),
                    ("When did the Stonebridge Library open?", "1889"),
                    ("Whose funds paid for the library?", "Cornelius Stonebridge"),
                    ("Who designed the library building?", "Mary Felling"),
                    ("How wide is the domed reading room?", "18 metres"),
                    ("How many round windows light the reading room?", "sixteen"),
                    ("How many volumes did the library begin with?", "12,000"),
                    ("How many items does the library hold now?", "more than 250,000"),
                    ("Where were its most valuable books stored during the Second World War?",
                     "a disused mine"),
                    ("When was a children's wing added?", "1972"),
                    ("Who designed the children's wing?", None, "Mary Felling"),
                    ("How many maps are in the collection of local maps?", None, "12,000"),
                    ("When was the children's wing demolished?", None, "1972"),
                ],
            },
        ],
    },
    {
        "title": "Tarrow Lighthouse",
        "paragraphs": [
            {
                "context": (
                    "Tarrow Lighthouse stands on a low island at the entrance to Tarrow Sound and warns "
                    "ships away from the Minnock Shoal, a sandbank that wrecked dozens of vessels in the "
                    "eighteenth century. The present granite tower, 36 metres tall, was completed in 1846 to "
                    "a design by the engineer Robert Hale, replacing a wooden beacon that had burned down. "
                    "Its light, originally produced by oil lamps and mirrors, flashes white twice every "
                    "fifteen seconds and can be seen from 22 nautical miles. The lighthouse was automated in "
                    "1989, and the last keepers left the island that year. The former keepers' cottages are "
                    "now rented to holidaymakers."
                ),
                "qas": [
                    ("What does Tarrow Lighthouse warn ships away from?", "the Minnock Shoal"),
                    ("What is the Minnock Shoal?", "a sandbank"),
                    ("How tall is the present granite tower?", "36 metres"),
                    ("When was the present tower completed?", "1846"),
                    ("Who designed the present tower?", "Robert Hale"),
                    ("What did the granite tower replace?", "a wooden beacon"),
                    ("How was the light originally produced?", "by oil lamps and mirrors"),
                    ("How often does the light flash white?", "twice every fifteen seconds"),
                    ("From how far away can the light be seen?", "22 nautical miles"),
                    ("When was the lighthouse automated?", "1989"),
                    ("Who was the last keeper of Tarrow Lighthouse?", None),
                    ("In what year did the wooden beacon burn down?", None, "1846"),
                ],
            },
        ],
    },
    {
        "title": "Quillstone",
        "paragraphs": [
            {
                "context": (
                    "Quillstone is a strategy board game for two to four players, designed by the teacher "
                    "Hana Okoro and first published in 1978. Players take turns placing coloured stones on a "
                    "hexagonal board of 91 cells, trying to link opposite edges while blocking their "
                    "opponents. A stone surrounded on all sides is captured and removed from the board. The "
                    "game became popular in schools because its rules fit on a single page, and a world "
                    "championship has been held every year since 1995. The record for most titles belongs to "
                    "Lucas Varga, who won seven times between 2003 and 2014. An online version released in "
                    "2010 has more than two million registered players."
                ),
                "qas": [
                    ("How many players is Quillstone for?", "two to four"),
                    ("Who designed Quillstone?", "Hana Okoro"),
                    ("When was Quillstone first published?", "1978"),
                    ("How many cells does the board have?", "91"),
                    ("What shape is the board?", "hexagonal"),
                    ("What are players trying to link?", "opposite edges"),
                    ("Why did the game become popular in schools?", "its rules fit on a single page"),
                    ("Since what year has a world championship been held?", "1995"),
                    ("Who holds the record for most titles?", "Lucas Varga"),
                    ("How many registered players does the online version have?", "more than two million"),
                    ("Who won the first world championship?", None, "Lucas Varga"),
                    ("How many stones does each player start with?", None),
                    ("How many times did Hana Okoro win the world championship?", None, "seven"),
                ],
            },
        ],
    },
]

# ---------------------------------------------------------------------------------------------------
# Development paragraphs: 6 paragraphs in 3 articles; answerable questions carry 1-3 gold answers.
# ---------------------------------------------------------------------------------------------------
DEV = [
    {
        "title": "Port Ellamy",
        "paragraphs": [
            {
                "context": (
                    "Port Ellamy is a harbour town on the southern coast, at the mouth of the small river "
                    "Ell. It was founded in 1887 as a coaling station for steamships, on land bought from "
                    "the Ashcombe estate. The harbour is protected by a curved breakwater 820 metres long, "
                    "built of concrete blocks between 1890 and 1896. Coal exports peaked in 1913, when more "
                    "than 2 million tonnes left the port, but declined rapidly after ships turned to oil. "
                    "Today the harbour is used mainly by fishing boats and yachts, and the old coal wharf "
                    "has been turned into a promenade lined with cafés. The town's population is about "
                    "14,000."
                ),
                "qas": [
                    ("When was Port Ellamy founded?", ["1887", "in 1887"]),
                    ("At the mouth of which river is Port Ellamy?",
                     ["Ell", "the small river Ell", "river Ell"]),
                    ("Port Ellamy was founded as what?",
                     ["a coaling station for steamships", "a coaling station"]),
                    ("From which estate was the land for the town bought?",
                     ["the Ashcombe estate", "Ashcombe"]),
                    ("How long is the breakwater?", ["820 metres", "820 metres long"]),
                    ("What is the breakwater built of?", ["concrete blocks"]),
                    ("When did coal exports peak?", ["1913", "in 1913"]),
                    ("How much coal left the port in 1913?",
                     ["more than 2 million tonnes", "2 million tonnes"]),
                    ("What has the old coal wharf been turned into?",
                     ["a promenade lined with cafés", "a promenade"]),
                    ("What is the population of the town?", ["about 14,000", "14,000"]),
                    ("When was the breakwater extended?", None, "between 1890 and 1896"),
                    ("Who founded Port Ellamy?", None),
                    ("What is the population of the Ashcombe estate?", None, "about 14,000"),
                ],
            },
            {
                "context": (
                    "Port Ellamy's best-known landmark is the Clock House, a red-brick harbour office with a "
                    "four-faced clock, completed in 1902. The town holds a sea shanty festival every June "
                    "that attracts choirs from across the country. Its football club, Ellamy Rovers, plays "
                    "at the Breakwater Ground and won the regional cup in 1958 and 1976. The painter Agnes "
                    "Dorrow lived in a cottage on Ship Street from 1921 until her death in 1949, and her "
                    "harbour scenes hang in the town museum. A lifeboat has been stationed in the town since "
                    "1891; its crews have received eleven medals for gallantry."
                ),
                "qas": [
                    ("What is Port Ellamy's best-known landmark?", ["the Clock House", "Clock House"]),
                    ("When was the Clock House completed?", ["1902", "in 1902"]),
                    ("How often does the town hold a sea shanty festival?", ["every June"]),
                    ("What is the town's football club called?", ["Ellamy Rovers"]),
                    ("Where does Ellamy Rovers play?", ["the Breakwater Ground", "Breakwater Ground"]),
                    ("Which painter lived in a cottage on Ship Street?",
                     ["Agnes Dorrow", "The painter Agnes Dorrow"]),
                    ("In what year did Agnes Dorrow die?", ["1949", "in 1949"]),
                    ("Where do Agnes Dorrow's harbour scenes hang?",
                     ["the town museum", "in the town museum"]),
                    ("Since when has a lifeboat been stationed in the town?", ["1891", "since 1891"]),
                    ("How many medals for gallantry have the lifeboat crews received?",
                     ["eleven", "eleven medals", "eleven medals for gallantry"]),
                    ("When did Ellamy Rovers win the national cup?", None, "1958"),
                    ("Who designed the Clock House?", None),
                ],
            },
        ],
    },
    {
        "title": "Brightwater Canal",
        "paragraphs": [
            {
                "context": (
                    "The Brightwater Canal is a narrow canal, 58 kilometres long, linking the inland town of "
                    "Hobbet with the tidal river at Mardon Quay. It was authorised by an act of parliament "
                    "in 1794 and engineered by William Tansey, who had trained as a millwright. The canal "
                    "rises through 31 locks, 17 of them grouped in a steep flight at Coldharbour Hill, and "
                    "passes through the 1,100-metre Lowick Tunnel. Because the tunnel had no towpath, "
                    "boatmen propelled their boats through it by pushing with their legs against the walls, "
                    "a practice known as legging. The full line opened in 1801 and carried mainly coal, lime "
                    "and grain."
                ),
                "qas": [
                    ("How long is the Brightwater Canal?", ["58 kilometres", "58 kilometres long"]),
                    ("Which inland town does the canal link with the tidal river?", ["Hobbet"]),
                    ("When was the canal authorised by an act of parliament?", ["1794", "in 1794"]),
                    ("Who engineered the Brightwater Canal?", ["William Tansey"]),
                    ("What had William Tansey trained as?", ["a millwright", "millwright"]),
                    ("How many locks does the canal rise through?", ["31", "31 locks"]),
                    ("Where is the steep flight of locks?", ["Coldharbour Hill", "at Coldharbour Hill"]),
                    ("How long is the Lowick Tunnel?", ["1,100-metre", "1,100"]),
                    ("What was the practice of pushing boats through the tunnel with the legs known as?",
                     ["legging"]),
                    ("When did the full line open?", ["1801", "in 1801"]),
                    ("What did the canal mainly carry?", ["coal, lime and grain"]),
                    ("When did the canal close to commercial traffic?", None, "1801"),
                    ("Who built the towpath through the Lowick Tunnel?", None, "William Tansey"),
                    ("In what year did William Tansey train as a millwright?", None, "1794"),
                ],
            },
            {
                "context": (
                    "Traffic on the Brightwater Canal fell after the Hobbet railway opened in 1846, and the "
                    "last commercial cargo, a load of timber, was carried in 1938. The canal was then "
                    "abandoned, and parts of it were filled in to build a road. In 1969 volunteers formed "
                    "the Brightwater Canal Trust to restore the waterway. Over the next forty years they "
                    "cleared the channel, rebuilt the Coldharbour flight and reopened the Lowick Tunnel. The "
                    "restored canal was reopened throughout its length on 12 May 2012 by the naturalist Dora "
                    "Finch. It now attracts about 300,000 visitors a year, who come to walk the towpath, "
                    "fish or hire narrowboats."
                ),
                "qas": [
                    ("When did the Hobbet railway open?", ["1846", "in 1846"]),
                    ("What was the last commercial cargo on the canal?", ["a load of timber", "timber"]),
                    ("When was the last commercial cargo carried?", ["1938", "in 1938"]),
                    ("Why were parts of the canal filled in?", ["to build a road", "build a road"]),
                    ("When did volunteers form the Brightwater Canal Trust?", ["1969", "In 1969"]),
                    ("Which flight of locks did the volunteers rebuild?",
                     ["the Coldharbour flight", "Coldharbour flight", "Coldharbour"]),
                    ("On what date was the restored canal reopened?", ["12 May 2012", "on 12 May 2012"]),
                    ("Who reopened the restored canal?", ["Dora Finch", "the naturalist Dora Finch"]),
                    ("How many visitors does the canal attract each year?", ["about 300,000", "300,000"]),
                    ("Who founded the Hobbet railway?", None),
                    ("How many volunteers formed the Brightwater Canal Trust?", None),
                    ("When was the road built over the canal removed?", None, "12 May 2012"),
                ],
            },
        ],
    },
    {
        "title": "Marisol Quennell",
        "paragraphs": [
            {
                "context": (
                    "Marisol Quennell (1838–1911) was a botanist and illustrator who catalogued the flora of "
                    "the Sarrow Islands. Born in the cathedral city of Wexmoor, she was educated at home by "
                    "her father, a physician with an interest in ferns. In 1864 she sailed to the Sarrow "
                    "Islands with her brother Edmund, intending to stay for one year; she remained for nine. "
                    "During that time she collected about 4,500 plant specimens and painted more than 800 "
                    "watercolours of flowers. Her two-volume Flora Sarrowensis, published in 1878, described "
                    "62 species new to science, including a tree fern now named Cyathea quennelliae in her "
                    "honour."
                ),
                "qas": [
                    ("What did Marisol Quennell catalogue?", ["the flora of the Sarrow Islands"]),
                    ("Where was Quennell born?", ["Wexmoor", "the cathedral city of Wexmoor"]),
                    ("Who educated Quennell at home?", ["her father"]),
                    ("In what year did she sail to the Sarrow Islands?", ["1864", "In 1864"]),
                    ("Who did she sail to the Sarrow Islands with?", ["her brother Edmund", "Edmund"]),
                    ("How many years did she remain on the islands?", ["nine"]),
                    ("How many plant specimens did she collect?", ["about 4,500", "4,500"]),
                    ("How many watercolours of flowers did she paint?", ["more than 800", "800"]),
                    ("When was Flora Sarrowensis published?", ["1878", "in 1878"]),
                    ("How many species new to science did Flora Sarrowensis describe?", ["62", "62 species"]),
                    ("What tree fern is named in her honour?", ["Cyathea quennelliae"]),
                    ("Who published the Flora Sarrowensis?", None),
                    ("How many watercolours did her brother paint?", None, "more than 800"),
                    ("How many plant specimens did Edmund collect?", None, "about 4,500"),
                ],
            },
            {
                "context": (
                    "After returning from the islands, Quennell settled in a house at Fennick near the "
                    "coast, where she built a glasshouse to grow the plants she had brought back. In 1885 "
                    "she became the first woman to be awarded the Linden Medal of the Botanical Society, "
                    "though the society did not admit women as full members until 1904. She corresponded "
                    "with botanists in twelve countries and trained several young illustrators, among them "
                    "Clara Voss. Her watercolours were bequeathed to the Wexmoor Museum, which displayed a "
                    "selection of them in a centenary exhibition in 2011. The Fennick glasshouse was "
                    "demolished in 1952, but part of its cast-iron frame survives in the grounds of Fennick "
                    "Hall."
                ),
                "qas": [
                    ("Where did Quennell settle after returning from the islands?",
                     [("Fennick", 0), "a house at Fennick", "at Fennick near the coast"]),
                    ("What did she build to grow the plants she had brought back?",
                     ["a glasshouse", ("glasshouse", 0)]),
                    ("What medal was she awarded in 1885?",
                     ["the Linden Medal of the Botanical Society", "the Linden Medal", "Linden Medal"]),
                    ("When did the Botanical Society first admit women as full members?", ["1904"]),
                    ("In how many countries did she have botanists to correspond with?",
                     ["twelve", "twelve countries"]),
                    ("Which young illustrator did Quennell train?", ["Clara Voss"]),
                    ("To which museum were her watercolours bequeathed?",
                     ["the Wexmoor Museum", "Wexmoor Museum"]),
                    ("When was the centenary exhibition held?", ["2011", "in 2011"]),
                    ("When was the Fennick glasshouse demolished?", ["1952", "in 1952"]),
                    ("Where does part of the cast-iron frame survive?",
                     ["in the grounds of Fennick Hall", "the grounds of Fennick Hall", "Fennick Hall"]),
                    ("When did Quennell become a full member of the Botanical Society?", None, "1904"),
                    ("In what year did Clara Voss publish her first illustrations?", None, "2011"),
                ],
            },
        ],
    },
]


# ---------------------------------------------------------------------------------------------------
def _is_word_char(ch: str) -> bool:
    return ch.isalnum()


def find_span(context: str, text: str, occurrence: int | None) -> int:
    """Character offset of `text` in `context`: its `occurrence`-th whole-word hit (0-based)."""
    hits, start = [], context.find(text)
    while start != -1:
        end = start + len(text)
        before_ok = start == 0 or not _is_word_char(context[start - 1]) or not _is_word_char(text[0])
        after_ok = end == len(context) or not _is_word_char(context[end]) or not _is_word_char(text[-1])
        if before_ok and after_ok:
            hits.append(start)
        start = context.find(text, start + 1)
    if not hits:
        raise ValueError(f"answer {text!r} does not occur (as whole words) in: {context[:60]!r}...")
    if occurrence is None:
        if len(hits) > 1:
            raise ValueError(f"answer {text!r} occurs {len(hits)} times; give its occurrence: "
                             f"{context[:60]!r}")
        occurrence = 0
    if occurrence >= len(hits):
        raise ValueError(f"answer {text!r} has only {len(hits)} occurrence(s), not #{occurrence}")
    return hits[occurrence]


def _answers(context: str, spec) -> list[dict]:
    specs = spec if isinstance(spec, list) else [spec]
    out = []
    for one in specs:
        text, occurrence = one if isinstance(one, tuple) else (one, None)
        if text != text.strip() or not text:
            raise ValueError(f"answer {text!r} has surrounding whitespace or is empty")
        out.append({"text": text, "answer_start": find_span(context, text, occurrence)})
    return out


def build(articles: list[dict], split: str, max_golds: int) -> dict:
    """The SQuAD v2.0 JSON object for one split; ids run demo-<split>-0001, 0002, ..."""
    number, data = 0, []
    for article in articles:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            words = len(context.split())
            if not MIN_WORDS <= words <= MAX_WORDS:
                raise ValueError(f"{article['title']}: paragraph has {words} words ({MIN_WORDS}-{MAX_WORDS})")
            qas, questions = [], set()
            for question, answer, *plausible in paragraph["qas"]:
                if question in questions or not question.endswith("?"):
                    raise ValueError(f"{article['title']}: duplicate or malformed question {question!r}")
                questions.add(question)
                number += 1
                qa = {"id": f"demo-{split}-{number:04d}", "question": question}
                if answer is None:
                    qa["answers"] = []
                    qa["is_impossible"] = True
                    if plausible:
                        qa["plausible_answers"] = _answers(context, plausible[0])
                else:
                    qa["answers"] = _answers(context, answer)
                    qa["is_impossible"] = False
                    if len(qa["answers"]) > max_golds:
                        raise ValueError(f"{question!r}: more than {max_golds} gold answers")
                qas.append(qa)
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": article["title"], "paragraphs": paragraphs})
    return {"version": "v2.0", "data": data}


def render(dataset: dict) -> str:
    return json.dumps(dataset, ensure_ascii=False, indent=1) + "\n"


def summary(name: str, dataset: dict) -> str:
    paragraphs = [p for a in dataset["data"] for p in a["paragraphs"]]
    qas = [qa for p in paragraphs for qa in p["qas"]]
    impossible = sum(qa["is_impossible"] for qa in qas)
    return (f"{name}: {len(dataset['data'])} articles, {len(paragraphs)} paragraphs, {len(qas)} questions, "
            f"{impossible} unanswerable ({100 * impossible / len(qas):.1f}%)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only check that the JSON files are up to date.")
    parser.add_argument("--out_dir", type=Path, default=HERE,
                        help="Where to write the files (default: next to this script).")
    args = parser.parse_args(argv)

    outputs = {
        "demo-train-v2.0.json": build(TRAIN, "train", max_golds=1),
        "demo-dev-v2.0.json": build(DEV, "dev", max_golds=3),
    }
    stale = []
    for name, dataset in outputs.items():
        path = args.out_dir / name
        text = render(dataset)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            atomic_io.write_text_atomic(path, text)
        print(summary(name, dataset))
    if stale:
        print(f"out of date: {', '.join(stale)} (run {Path(__file__).name})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
