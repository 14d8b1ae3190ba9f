"""Names for generated patients: common given names and surnames from across India.

A generated record picks its given name and surname each by one byte, so the tables below are
stretched to exactly 256 entries (repeating the more common names, which also weights them).
"""

from __future__ import annotations


def _words(text: str) -> list[str]:
    return text.split()


_MALE = _words(
    "Aarav Abdul Aditya Ajay Akash Akhil Alok Amit Anand Anil Ankit Anuj Arjun Arnab Arun "
    "Arvind Ashok Ashwin Ayaan Balaji Baljeet Bharat Bhavesh Chetan Debashish Deepak Dev "
    "Dhruv Dinesh Faisal Francis Ganesh Gaurav George Girish Gopal Gurpreet Harish Harsh "
    "Hemant Hitesh Imran Irfan Ishaan Jagdish Jaswinder Jatin Javed Jignesh Joseph Kalpesh "
    "Karan Karthik Karthikeyan Krishna Kunal Lakshman Madhav Mahesh Manish Manoj Mohan "
    "Mohammed Mukesh Murali Murugan Nagaraj Naresh Naveen Nikhil Nilesh Nitin Pankaj Paresh "
    "Partha Pradeep Prakash Pranav Prasad Praveen Raghav Rahul Rajesh Rakesh Ramesh Ravi "
    "Ritesh Rohan Rohit Sachin Salman Sameer Sanjay Santosh Saravanan Satish Sebastian "
    "Senthil Shankar Shiv Shreyas Siddharth Sourav Sridhar Srinivas Subhash Sunil Suresh "
    "Tapan Tarun Thomas Tushar Uday Umesh Varun Venkatesh Vijay Vikas Vikram Vinay Vinod "
    "Vishal Vivek Yash Yogesh Zubair"
)

_FEMALE = _words(
    "Aadhya Aarti Aishwarya Ananya Anita Anjali Ankita Annamma Anusha Aparna Archana Asha "
    "Ashwini Ayesha Bhagyashree Bhavana Bhavya Chitra Debjani Deepa Deepika Dhara Divya "
    "Durga Falguni Farah Fatima Gayatri Geeta Gurleen Harini Harleen Hema Hetal Indira Isha "
    "Jasleen Jaya Jyoti Kajal Kalpana Kamakshi Kamala Kavita Kavya Keerthana Komal Krupa "
    "Lakshmi Lata Leela Madhuri Malathi Mamta Manisha Manjula Meena Meera Megha Moumita "
    "Mousumi Mrunal Nazia Neha Nisha Nithya Padma Pallavi Payal Pooja Poonam Preeti Priya "
    "Priyanka Radha Radhika Rani Rashmi Rekha Renu Reshma Revathi Ritu Riya Rukhsar Rupa "
    "Sadhana Sana Sangeeta Saraswati Sarita Savita Selvi Shabnam Shalini Shanti Sharmila "
    "Sharmistha Shilpa Shobha Shreya Shweta Simran Sita Smita Sneha Sonali Sudha Suman "
    "Sumathi Sunita Swati Tanvi Tulsi Uma Usha Vaishnavi Vandana Varsha Vidya Yamuna Zainab"
)

_COMMON_SURNAMES = _words(
    "Sharma Singh Kumar Patel Reddy Das Yadav Gupta Khan Nair Iyer Shah Rao Joshi Verma "
    "Mishra Pillai Naidu Patil Ghosh"
)

_SURNAMES = _words(
    "Abraham Acharya Agarwal Ahmed Ahuja Annamalai Ansari Arora Bajwa Banerjee Bansal Barua "
    "Bhat Bhatia Bhattacharya Bhatt Bhosale Bhutia Bisht Bora Bose Chakraborty Chatterjee "
    "Chaturvedi Chaudhary Chauhan Chavan Chettiar Chopra Chowdary D'Souza Dar Dave Deshpande "
    "Desai Dhillon Dogra Dubey Dutta Fernandes Gaikwad Ganguly George Gill Gogoi Gomes Goud "
    "Gounder Gowda Goyal Grewal Hazarika Hegde Hussain Iyengar Jacob Jadhav Jain Joseph "
    "Kalita Kale Kamath Kapoor Kaul Khandelwal Khanna Krishnan Kulkarni Kurian Kurup "
    "Kushwaha Lal Lone Lyngdoh Mahapatra Majumdar Malhotra Manjhi Marak Mathew Maurya Mehra "
    "Mehta Menon Mirza Mittal Modi Mohanty Mudaliar More Mukherjee Munda Murthy Nadar Naik "
    "Negi Oraon Pai Panda Pandey Pandian Parikh Paswan Pathan Patnaik Pawar Pereira "
    "Prajapati Prasad Qureshi Raina Rajput Raju Raman Rana Rathore Rawat Rodrigues Roy "
    "Sahoo Saikia Sandhu Sangma Sarkar Saxena Selvam Sen Sethi Sheikh Shetty Shinde Shukla "
    "Siddiqui Sidhu Soni Srivastava Subramaniam Syed Thakkar Thakur Thapa Thevar Thomas "
    "Tiwari Trivedi Tripathi Varghese Varma Venkataraman Vishwakarma Vyas Wani"
)


def _stretch(names: list[str], size: int) -> tuple[str, ...]:
    return tuple(names[i % len(names)] for i in range(size))


# Byte values 0-127 are men's given names, 128-255 women's: the byte also decides the gender.
GIVEN_NAMES: tuple[str, ...] = _stretch(_MALE, 128) + _stretch(_FEMALE, 128)
SURNAMES: tuple[str, ...] = _stretch(_COMMON_SURNAMES * 2 + _SURNAMES, 256)
